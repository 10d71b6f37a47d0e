"""Tests for minima_nb.export.pages: exports read through the ADBC SQLite driver equal the sqlite3 path."""

from __future__ import annotations

import datetime as dt
import sqlite3
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _cache_rows import T0, fill, row

from minima_nb.cache import CacheRow, PromptCache
from minima_nb.errors import CacheError
from minima_nb.export import PARQUET_SCHEMA, CacheView, open_cache, view
from minima_nb.export import pages as arrowpages

BIG = "鳥😀" * 100_000 + "x" * 300_000  # about 1 MB of UTF-8
EMOJI = "emoji 😀🎉, 中文 问题, مرحبا بالعالم"
MIXED_ROWS, NULL_NAMESPACE_ROWS, NULL_FIRST = 3_200, 3_000, 5


def mixed_row(i: int) -> CacheRow:
    """Row i of the mixed cache: namespace NULL for the first 3,000 rows, tokens/latency NULL first."""
    late = i >= NULL_FIRST
    return row(f"k{i:05d}", model=("m1", "m2", "m3")[i % 3],
               namespace="ns" if i >= NULL_NAMESPACE_ROWS else None,
               text=EMOJI if i == 1 else BIG if i == 2 else None, created_at=T0 + i * 60,
               raw={"id": i, "note": "é😀"} if late else None, input_tokens=i if late else None,
               output_tokens=i % 7 if late else None, finish_reason="stop" if late else None,
               latency_s=i / 7 if late else None)


def small_keys(n: int) -> list[str]:
    return [f"s{i:02d}" for i in range(n)]


def fill_small(directory: Path, n: int = 20) -> list[str]:
    """n rows, namespace NULL in the first half, unicode text; returns the keys in insert order."""
    keys = small_keys(n)
    fill(directory, [row(k, namespace=None if i < n // 2 else "ns", text=f"{EMOJI} {i}",
                         created_at=T0 + i, input_tokens=None if i < 3 else i,
                         latency_s=None if i < 3 else i / 3) for i, k in enumerate(keys)])
    return keys


def export(cache_view: CacheView, path: Path, **options) -> pa.Table:
    """Export through to_parquet and read the file back, without its schema metadata."""
    cache_view.to_parquet(path, **options)
    return pq.read_table(path).replace_schema_metadata(None)


def sqlite3_export(cache_view: CacheView, path: Path, **options) -> pa.Table:
    """The same export with the driver unavailable, so every page is read with sqlite3."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(arrowpages, "_adbc_connect", lambda: None)
        return export(cache_view, path, **options)


@pytest.fixture
def driver(monkeypatch):
    """Counts the driver's connections and the rows of the pages it read without error."""
    seen = {"connections": 0, "pages": 0, "rows": 0}
    real_adbc_connect, real_page = arrowpages._adbc_connect, arrowpages._DriverPager.page

    def counting_adbc_connect():
        connect = real_adbc_connect()
        assert connect is not None, "adbc-driver-sqlite is not importable"

        def counted(path):
            conn = connect(path)
            seen["connections"] += 1
            return conn

        return counted

    def counting_page(self, after, params, size):
        table = real_page(self, after, params, size)
        seen["pages"] += 1
        seen["rows"] += table.num_rows
        return table

    monkeypatch.setattr(arrowpages, "_adbc_connect", counting_adbc_connect)
    monkeypatch.setattr(arrowpages._DriverPager, "page", counting_page)
    return seen


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """3,200 rows: NULL namespace for 3,000 then strings, NULL-first tokens, emoji, a 1 MB text."""
    directory = tmp_path_factory.mktemp("mixed")
    fill(directory, [mixed_row(i) for i in range(MIXED_ROWS)])
    with open_cache(directory) as cache_view:
        yield cache_view


# -- same tables either way -----------------------------------------------------------------------


def test_driver_and_sqlite3_exports_are_identical(mixed, tmp_path, driver):
    """The driver path writes exactly the sqlite3 path's table, NULL-first columns typed right."""
    fast = export(mixed, tmp_path / "driver.parquet")
    assert driver["connections"] > 0 and driver["rows"] == MIXED_ROWS  # no page fell back
    slow = sqlite3_export(mixed, tmp_path / "sqlite3.parquet")
    assert fast.equals(slow)
    assert fast.schema.equals(PARQUET_SCHEMA)
    namespace = fast["namespace"].to_pylist()
    assert namespace[:NULL_NAMESPACE_ROWS] == [None] * NULL_NAMESPACE_ROWS
    assert namespace[NULL_NAMESPACE_ROWS:] == ["ns"] * (MIXED_ROWS - NULL_NAMESPACE_ROWS)
    assert fast["input_tokens"].to_pylist()[:NULL_FIRST + 2] == [None] * NULL_FIRST + [5, 6]
    assert fast["latency_s"].to_pylist()[NULL_FIRST - 1:NULL_FIRST + 1] == [None, 5 / 7]
    texts = fast["text"].to_pylist()
    assert texts[1] == EMOJI and texts[2] == BIG
    assert fast["created_at"][3].as_py() == dt.datetime(2024, 5, 1, 0, 3, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("options", [
    {"include_raw": False},
    {"model": ["m2", "m3"]},
    {"namespace": "ns"},
    {"namespace": ["ns"], "model": "m1"},
    {"since": "2024-05-01T00:02:00Z", "until": dt.datetime(2024, 5, 3, 1, 0)},
    {"model": []},
], ids=["no-raw", "models", "namespace", "namespace-and-model", "since-until", "no-model"])
def test_filtered_exports_are_identical(mixed, tmp_path, driver, options):
    """Filters and include_raw=False give the same rows on both paths, all read by the driver."""
    filters = {k: v for k, v in options.items() if k != "include_raw"}
    expected = mixed.count(**filters)
    fast = export(mixed, tmp_path / "driver.parquet", **options)
    assert driver["rows"] == expected == fast.num_rows
    assert fast.equals(sqlite3_export(mixed, tmp_path / "sqlite3.parquet", **options))
    if options.get("include_raw") is False:
        assert fast["raw"].null_count == MIXED_ROWS and fast.schema.field("raw").type == pa.string()
    if options.get("model"):
        models = {options["model"]} if isinstance(options["model"], str) else set(options["model"])
        assert set(fast["model"].to_pylist()) == models


@pytest.mark.parametrize("chunk_size", [1, 7, 1_000])
def test_chunk_sizes_give_identical_files(tmp_path, driver, chunk_size):
    """Pages of 1, 7 or more rows than the cache holds give the same table on both paths."""
    keys = fill_small(tmp_path / "c")
    with open_cache(tmp_path / "c") as cache_view:
        fast = export(cache_view, tmp_path / "driver.parquet", chunk_size=chunk_size)
        slow = sqlite3_export(cache_view, tmp_path / "sqlite3.parquet", chunk_size=chunk_size)
    assert driver["rows"] == len(keys)
    assert fast.equals(slow)
    assert fast["key"].to_pylist() == keys


def test_empty_cache_is_identical_on_both_paths(tmp_path, driver):
    """An empty cache gives a 0-row table of the full schema through the driver and through sqlite3."""
    with open_cache(tmp_path / "empty") as cache_view:
        fast = export(cache_view, tmp_path / "driver.parquet")
        slow = sqlite3_export(cache_view, tmp_path / "sqlite3.parquet")
        assert list(cache_view.to_pandas().columns) == PARQUET_SCHEMA.names
    assert driver["connections"] > 0
    assert fast.num_rows == 0 and fast.equals(slow) and fast.schema.equals(PARQUET_SCHEMA)


def test_to_pandas_is_identical_and_limit_agrees(mixed, driver):
    """to_pandas() is the same frame on both paths, and limit=5 (sqlite3 path) is its first 5 rows."""
    frame = mixed.to_pandas(include_raw=True)
    assert driver["rows"] == MIXED_ROWS
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(arrowpages, "_adbc_connect", lambda: None)
        pd.testing.assert_frame_equal(frame, mixed.to_pandas(include_raw=True))
    pd.testing.assert_frame_equal(mixed.to_pandas(include_raw=True, limit=5), frame.head(5))
    by_namespace = mixed.to_pandas(namespace="ns")
    pd.testing.assert_frame_equal(mixed.to_pandas(namespace="ns", limit=5), by_namespace.head(5))


# -- falling back ---------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"namespace": "ns"}], ids=["all", "namespace"])
def test_driver_failure_mid_export_resumes_with_sqlite3(tmp_path, monkeypatch, options):
    """A driver error on the 2nd page: every row is written once, in order, as on the sqlite3 path."""
    keys = fill_small(tmp_path / "c")
    keys = keys[len(keys) // 2:] if options else keys  # the 2nd half has namespace "ns"
    real_page, calls = arrowpages._DriverPager.page, []

    def failing_page(self, after, params, size):
        calls.append(after)
        if len(calls) == 2:
            raise RuntimeError("driver broke")
        return real_page(self, after, params, size)

    monkeypatch.setattr(arrowpages._DriverPager, "page", failing_page)
    with open_cache(tmp_path / "c") as cache_view:
        mixed_path = export(cache_view, tmp_path / "mixed.parquet", chunk_size=3, **options)
        slow = sqlite3_export(cache_view, tmp_path / "sqlite3.parquet", chunk_size=3, **options)
    assert len(calls) == 2  # the driver read page 1, then sqlite3 read the rest
    assert mixed_path["key"].to_pylist() == keys
    assert mixed_path.equals(slow)


def test_cell_the_driver_cannot_type_falls_back_to_sqlite3(tmp_path):
    """A REAL written into input_tokens by another tool: the export still matches the sqlite3 path."""
    fill_small(tmp_path / "c", n=5)
    with sqlite3.connect(tmp_path / "c" / "minima_llm.db") as conn:
        conn.execute("UPDATE responses SET input_tokens = 3.5 WHERE key = 's04'")
    with open_cache(tmp_path / "c") as cache_view:
        fast = export(cache_view, tmp_path / "fast.parquet")
        slow = sqlite3_export(cache_view, tmp_path / "sqlite3.parquet")
    assert fast.num_rows == 5 and fast.equals(slow)


def test_text_that_is_not_utf8_is_refused_as_on_the_sqlite3_path(tmp_path):
    """Invalid UTF-8 stored by another tool is a CacheError, not a Parquet file that cannot be read."""
    fill_small(tmp_path / "c", n=5)
    with sqlite3.connect(tmp_path / "c" / "minima_llm.db") as conn:
        conn.execute("UPDATE responses SET text = CAST(X'C328' AS TEXT) WHERE key = 's01'")
    with open_cache(tmp_path / "c") as cache_view, pytest.raises(CacheError, match="UTF-8"):
        cache_view.to_parquet(tmp_path / "x.parquet", progress=False)
    assert list(tmp_path.glob("*.parquet")) == [] and list(tmp_path.glob(".*.tmp")) == []


def test_export_without_the_driver_installed(tmp_path, monkeypatch):
    """With adbc_driver_sqlite not importable, to_parquet still writes the documented schema."""
    monkeypatch.setitem(sys.modules, "adbc_driver_sqlite", None)
    monkeypatch.setitem(sys.modules, "adbc_driver_sqlite.dbapi", None)
    assert arrowpages._adbc_connect() is None
    keys = fill_small(tmp_path / "c")
    with open_cache(tmp_path / "c") as cache_view:
        summary = cache_view.to_parquet(tmp_path / "x.parquet", chunk_size=7)
    assert summary["rows"] == len(keys)
    schema = pq.read_schema(tmp_path / "x.parquet")
    assert schema.equals(PARQUET_SCHEMA)
    assert schema.metadata[b"minima_nb.schema_version"] == b"1"
    table = pq.read_table(tmp_path / "x.parquet")
    assert table["key"].to_pylist() == keys and table["text"][0].as_py() == f"{EMOJI} 0"


# -- what the export sees -------------------------------------------------------------------------


def test_queued_rows_appear_in_the_export(tmp_path, driver):
    """Rows put but not yet committed (60 s flush interval) are in view(cache) exports."""
    cache = PromptCache(tmp_path / "q", flush_interval_s=60)
    try:
        for i in range(3):
            cache.put(row(f"q{i}", created_at=T0 + i))
        with sqlite3.connect(cache.path) as conn:  # not committed yet: the export must commit them
            assert conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 0
        # progress=False skips the count() query, so only the driver's before_page flushes
        assert view(cache).to_parquet(tmp_path / "x.parquet", progress=False)["rows"] == 3
        assert driver["rows"] == 3
        cache.put(row("q3", created_at=T0 + 3))
        frame = CacheView.from_cache(cache).to_pandas()
        assert driver["rows"] == 7
    finally:
        cache.close()
    assert pq.read_table(tmp_path / "x.parquet")["key"].to_pylist() == ["q0", "q1", "q2"]
    assert frame["key"].tolist() == ["q0", "q1", "q2", "q3"]


def test_cache_path_with_uri_characters_uses_the_driver(tmp_path, driver):
    """A cache directory named with ' ', '#', '?' and '%' is read by the driver, rows intact."""
    directory = tmp_path / "my cache #1?a=b%20c%"
    keys = fill_small(directory, 12)
    with open_cache(directory) as cache_view:
        fast = export(cache_view, tmp_path / "driver.parquet", chunk_size=5)
        slow = sqlite3_export(cache_view, tmp_path / "sqlite3.parquet", chunk_size=5)
    assert driver["rows"] == len(keys)  # no page fell back to sqlite3
    assert fast["key"].to_pylist() == keys and fast.equals(slow)


@pytest.mark.parametrize("chunk_size", [1, 2, 50_000])
def test_typing_row_never_reaches_the_output(tmp_path, driver, chunk_size):
    """No typing row in files or frames: row counts equal the cache's, keys are the stored ones."""
    keys = fill_small(tmp_path / "c", 9)
    with open_cache(tmp_path / "c") as cache_view:
        table = export(cache_view, tmp_path / "x.parquet", chunk_size=chunk_size)
        frame = cache_view.to_pandas()
        count = cache_view.count()
    assert count == table.num_rows == len(frame) == len(keys)
    assert table["key"].to_pylist() == keys == frame["key"].tolist()
    assert "" not in table["key"].to_pylist()
    assert table["created_at"].null_count == 0 and table["model"].to_pylist() == ["m1"] * len(keys)
    assert driver["rows"] == 2 * len(keys)
