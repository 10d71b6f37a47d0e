"""Tests for minima_nb.export: the cache as a DataFrame and a Parquet file, and back."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _cache_rows import T0, fill, row

from minima_nb import MinimaLlmConfig, MinimaLlmRequest, OpenAIMinimaLlm, open_cache
from minima_nb._version import __version__
from minima_nb.errors import CacheError
from minima_nb.export import PARQUET_SCHEMA, CacheView, view
from minima_nb.testing import MockServer

KEY = "sk-test-EXPORT-SECRET-7f3a9c"
PROMPTS = ["What is 2+2?", "Capital of France?", "emoji 😀🎉", "中文 问题", "مرحبا بالعالم", "plain"]


def requests(prompts=PROMPTS):
    return [MinimaLlmRequest(request_id=f"r{i}", messages=[{"role": "user", "content": p}])
            for i, p in enumerate(prompts)]


def run(srv: MockServer, cache_dir: Path, prompts=PROMPTS):
    """Answer ``prompts`` through a real backend (with KEY) into ``cache_dir``; returns the results."""
    config = MinimaLlmConfig(base_url=srv.base_url, model="mock-model", api_key=KEY,
                             cache_dir=str(cache_dir), rpm=0)
    backend = OpenAIMinimaLlm(config)
    try:
        return asyncio.run(backend.run_batched(requests(prompts), progress=False))
    finally:
        backend.close()


def frame(cache_view: CacheView) -> pd.DataFrame:
    return cache_view.to_pandas(include_raw=True).sort_values("key").reset_index(drop=True)


@pytest.fixture
def srv():
    with MockServer(require_api_key=KEY) as server:
        yield server


@pytest.fixture
def filled(tmp_path):
    """A cache of six rows: two models, two namespaces, one day apart each."""
    fill(tmp_path / "src", [
        row(f"k{i}", model="m1" if i < 4 else "m2", namespace="a" if i % 2 else None,
            created_at=T0 + i * 86400, input_tokens=10 * i, output_tokens=i, raw={"id": i})
        for i in range(6)])
    with open_cache(tmp_path / "src") as v:
        yield v


# -- round trip ---------------------------------------------------------------------------------


def test_round_trip_gives_identical_rows(srv, tmp_path):
    """cache -> Parquet -> new cache: the same rows, raw bodies and unicode included."""
    run(srv, tmp_path / "a")
    with open_cache(tmp_path / "a") as a, open_cache(tmp_path / "b") as b:
        a.to_parquet(tmp_path / "x.parquet")
        b.from_parquet(tmp_path / "x.parquet")
        assert len(frame(a)) == len(PROMPTS)
        pd.testing.assert_frame_equal(frame(a), frame(b))
        assert set(frame(b)["text"]) >= {"4", "Paris"}


def test_imported_cache_answers_without_requests(srv, tmp_path):
    """A backend on the imported cache serves every prompt with zero requests to a new server."""
    first = run(srv, tmp_path / "a")
    with open_cache(tmp_path / "a") as a, open_cache(tmp_path / "b") as b:
        a.to_parquet(tmp_path / "x.parquet")
        b.from_parquet(tmp_path / "x.parquet")
    with MockServer(require_api_key=KEY) as fresh:
        again = run(fresh, tmp_path / "b")
        assert fresh.requests_total == 0
    assert [r.text for r in again] == [r.text for r in first]
    assert all(r.cached for r in again)


def test_import_twice_changes_nothing(filled, tmp_path):
    """Importing the same file a second time inserts, replaces and alters nothing."""
    filled.to_parquet(tmp_path / "x.parquet")
    with open_cache(tmp_path / "b") as b:
        first = b.from_parquet(tmp_path / "x.parquet")
        before = frame(b)
        for mode in ("keep", "replace"):
            again = b.from_parquet(tmp_path / "x.parquet", on_conflict=mode)
            assert (again["inserted"], again["replaced"], again["skipped"]) == (0, 0, 6)
        pd.testing.assert_frame_equal(frame(b), before)
    assert (first["rows"], first["inserted"], first["replaced"]) == (6, 6, 0)


def test_keep_and_replace_on_a_conflicting_row(tmp_path):
    """'keep' leaves the stored answer, 'replace' takes the file's."""
    fill(tmp_path / "new", [row("k", text="new answer")])
    fill(tmp_path / "old", [row("k", text="old answer")])
    with open_cache(tmp_path / "new") as new, open_cache(tmp_path / "old") as old:
        new.to_parquet(tmp_path / "x.parquet")
        kept = old.from_parquet(tmp_path / "x.parquet")
        assert (kept["inserted"], kept["replaced"], kept["skipped"]) == (0, 0, 1)
        assert list(old.to_pandas()["text"]) == ["old answer"]
        replaced = old.from_parquet(tmp_path / "x.parquet", on_conflict="replace")
        assert (replaced["inserted"], replaced["replaced"], replaced["skipped"]) == (0, 1, 0)
        assert list(old.to_pandas()["text"]) == ["new answer"]


def test_replace_with_a_no_raw_export_keeps_stored_raw(filled, tmp_path):
    """An export without raw bodies, imported with replace, does not erase the raw bodies."""
    filled.to_parquet(tmp_path / "x.parquet", include_raw=False)
    counts = filled.from_parquet(tmp_path / "x.parquet", on_conflict="replace")
    assert counts["replaced"] == 0
    assert filled.to_pandas(include_raw=True)["raw"].map(json.loads).tolist() == [{"id": i} for i in range(6)]


def test_frame_edited_in_pandas_imports_back(filled, tmp_path):
    """A to_pandas frame saved with DataFrame.to_parquet (no minima metadata) imports."""
    filled.to_pandas(model="m2").to_parquet(tmp_path / "edited.parquet")
    with open_cache(tmp_path / "b") as b:
        assert b.from_parquet(tmp_path / "edited.parquet")["inserted"] == 2
        assert sorted(b.to_pandas()["key"]) == ["k4", "k5"]


def test_naive_nanosecond_timestamps_import_as_utc(tmp_path):
    """A created_at column of naive nanosecond timestamps is read as UTC, cut to microseconds."""
    stamp = pd.Timestamp("2024-05-01T00:00:00.123456789")
    pq.write_table(pa.table({"key": ["a"], "model": ["m"], "messages": ["[]"], "params": ["{}"],
                             "text": ["t"], "created_at": pa.array([stamp.value], pa.timestamp("ns"))}),
                   tmp_path / "x.parquet")
    with open_cache(tmp_path / "c") as c:
        c.from_parquet(tmp_path / "x.parquet")
        assert c.to_pandas()["created_at"].iloc[0] == pd.Timestamp("2024-05-01T00:00:00.123456Z")


# -- filters ------------------------------------------------------------------------------------


def test_to_pandas_filters(filled):
    """model, namespace, since (inclusive) and until (exclusive) select rows; limit caps them."""
    keys = lambda **f: sorted(filled.to_pandas(**f)["key"])  # noqa: E731
    assert keys(model="m2") == ["k4", "k5"]
    assert keys(model=["m1", "m2"]) == [f"k{i}" for i in range(6)]
    assert keys(model=[]) == []
    assert keys(namespace="a") == ["k1", "k3", "k5"]
    assert keys(since="2024-05-03") == ["k2", "k3", "k4", "k5"]
    assert keys(until=dt.date(2024, 5, 3)) == ["k0", "k1"]
    assert keys(since=dt.datetime(2024, 5, 2), until=pd.Timestamp("2024-05-03T00:00:00Z")) == ["k1"]
    assert keys(since="2024-05-02T02:00:00+02:00", model="m1") == ["k1", "k2", "k3"]
    assert len(filled.to_pandas(limit=4)) == 4


def test_to_parquet_filters(filled, tmp_path):
    """Export writes only the matching rows."""
    summary = filled.to_parquet(tmp_path / "x.parquet", model="m1", namespace="a")
    assert summary["rows"] == 2
    assert sorted(pq.read_table(tmp_path / "x.parquet")["key"].to_pylist()) == ["k1", "k3"]


def test_delete_filters(filled):
    """delete removes only the matching rows, and everything without a filter."""
    assert filled.delete(since="2024-05-05") == 2
    assert filled.delete(model="m1", namespace="a") == 2
    assert sorted(filled.to_pandas()["key"]) == ["k0", "k2"]
    assert filled.delete() == 2
    assert filled.count() == 0


def test_bad_date_is_a_clear_value_error(filled):
    """A date that does not parse names the argument and the expected format."""
    with pytest.raises(ValueError, match="since='yesterday'.*ISO 8601"):
        filled.to_pandas(since="yesterday")


# -- types and schema ---------------------------------------------------------------------------


def test_file_schema_and_metadata(filled, tmp_path):
    """The file has exactly PARQUET_SCHEMA and the minima_nb metadata keys."""
    filled.to_parquet(tmp_path / "x.parquet")
    schema = pq.read_schema(tmp_path / "x.parquet")
    assert schema.equals(PARQUET_SCHEMA)
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items() if k.startswith(b"minima_nb.")}
    assert meta["minima_nb.schema_version"] == "1"
    assert meta["minima_nb.package_version"] == __version__
    assert dt.datetime.fromisoformat(meta["minima_nb.created_at"]).tzinfo is not None


def test_pandas_reads_back_the_types(filled, tmp_path):
    """pandas reads created_at as UTC microseconds and tokens as integers, values intact."""
    filled.to_parquet(tmp_path / "x.parquet")
    df = pd.read_parquet(tmp_path / "x.parquet").sort_values("key")
    assert str(df["created_at"].dtype) == "datetime64[us, UTC]"
    assert df["created_at"].iloc[1] == pd.Timestamp("2024-05-02T00:00:00Z")
    assert df["input_tokens"].tolist() == [0, 10, 20, 30, 40, 50]
    assert json.loads(df["messages"].iloc[0]) == [{"role": "user", "content": "k0"}]


def test_duckdb_reads_back_the_types(filled, tmp_path):
    """DuckDB reads the file with the documented SQL types and can query it directly."""
    import duckdb

    filled.to_parquet(tmp_path / "x.parquet", include_raw=False)
    path = str(tmp_path / "x.parquet")
    with duckdb.connect() as db:
        described = db.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()
        types = {name: sql_type for name, sql_type, *_ in described}
        tokens, first = db.execute(
            f"SELECT sum(input_tokens), min(created_at) FROM read_parquet('{path}')").fetchone()
    assert types["key"] == types["text"] == types["raw"] == "VARCHAR"
    assert types["input_tokens"] == types["output_tokens"] == "BIGINT"
    assert types["latency_s"] == "DOUBLE" and types["created_at"] == "TIMESTAMP WITH TIME ZONE"
    assert tokens == 150
    assert first.astimezone(dt.timezone.utc).isoformat().startswith("2024-05-01")


def test_to_pandas_dtypes(filled):
    """to_pandas gives nullable Int64 tokens and datetime64[us, UTC] created_at."""
    dtypes = filled.to_pandas().dtypes
    assert str(dtypes["input_tokens"]) == "Int64" and str(dtypes["output_tokens"]) == "Int64"
    assert str(dtypes["created_at"]) == "datetime64[us, UTC]"
    assert list(dtypes.index) == PARQUET_SCHEMA.names


def test_all_null_columns_keep_their_types(tmp_path):
    """No raw bodies and no tokens: raw stays a string column, tokens stay int64, all null."""
    fill(tmp_path / "c", [row("a"), row("b")])
    with open_cache(tmp_path / "c") as c:
        c.to_parquet(tmp_path / "x.parquet", include_raw=False)
    table = pq.read_table(tmp_path / "x.parquet")
    assert table.schema.field("raw").type == pa.string() and table["raw"].null_count == 2
    assert table.schema.field("input_tokens").type == pa.int64() and table["input_tokens"].null_count == 2


def test_empty_cache_exports_a_valid_empty_file(tmp_path):
    """An empty cache gives a 0-row file with the full schema, and an empty typed frame."""
    with open_cache(tmp_path / "empty") as c:
        assert c.to_parquet(tmp_path / "x.parquet")["rows"] == 0
        assert list(c.to_pandas().columns) == PARQUET_SCHEMA.names
    table = pq.read_table(tmp_path / "x.parquet")
    assert table.num_rows == 0 and table.schema.equals(PARQUET_SCHEMA)


def test_unicode_nulls_and_a_megabyte_answer(tmp_path):
    """Emoji, CJK, RTL text, a 1 MB answer and null fields survive the round trip."""
    big = "鳥😀" * 250_000 + "x" * 250_000
    fill(tmp_path / "a", [row("big", text=big), row("rtl", text="שלום עולם", finish_reason=None),
                          row("nulls", namespace=None, latency_s=None)])
    with open_cache(tmp_path / "a") as a, open_cache(tmp_path / "b") as b:
        a.to_parquet(tmp_path / "x.parquet", chunk_size=1)
        b.from_parquet(tmp_path / "x.parquet", chunk_size=1)
        texts = dict(zip(*(b.to_pandas()[c] for c in ("key", "text")), strict=True))
    assert texts["big"] == big and texts["rtl"] == "שלום עולם"
    assert pq.read_table(tmp_path / "x.parquet").schema.field("text").type == pa.large_string()


def test_rows_without_text_are_skipped_and_counted(tmp_path):
    """A file row with a null text is not imported; it counts as skipped and invalid."""
    table = pa.table({"key": ["a", "b"], "model": ["m", "m"], "messages": ["[]", "[]"],
                      "params": ["{}", "{}"], "text": ["ok", None]})
    pq.write_table(table, tmp_path / "x.parquet")
    with open_cache(tmp_path / "c") as c:
        counts = c.from_parquet(tmp_path / "x.parquet")
        assert (counts["inserted"], counts["skipped"], counts["invalid"]) == (1, 1, 1)
        assert c.to_pandas()["key"].tolist() == ["a"]


# -- wrong files --------------------------------------------------------------------------------


def test_wrong_schema_names_the_missing_columns(tmp_path):
    """A random DataFrame's Parquet file is refused, naming the missing and expected columns."""
    pd.DataFrame({"prompt": ["q"], "answer": ["a"]}).to_parquet(tmp_path / "x.parquet")
    with open_cache(tmp_path / "c") as c, pytest.raises(CacheError) as err:
        c.from_parquet(tmp_path / "x.parquet")
    assert "key, model, messages, params, text" in str(err.value) and "expected" in str(err.value)


def test_other_schema_version_is_refused(tmp_path):
    """A file of another schema version is refused, naming both versions."""
    table = PARQUET_SCHEMA.empty_table().replace_schema_metadata({"minima_nb.schema_version": "99"})
    pq.write_table(table, tmp_path / "x.parquet")
    with open_cache(tmp_path / "c") as c, pytest.raises(CacheError, match="version 99.*version 1"):
        c.from_parquet(tmp_path / "x.parquet")


def test_column_of_the_wrong_type_is_refused(tmp_path):
    """A text column of integers is refused, naming the column and the expected type."""
    pq.write_table(pa.table({"key": ["a"], "model": ["m"], "messages": ["[]"], "params": ["{}"],
                             "text": [1]}), tmp_path / "x.parquet")
    with open_cache(tmp_path / "c") as c, pytest.raises(CacheError, match="column text of type int64"):
        c.from_parquet(tmp_path / "x.parquet")


def test_non_parquet_file_is_a_cache_error(tmp_path):
    """A file that is not Parquet, or no file at all, is a CacheError, and nothing is imported."""
    (tmp_path / "x.parquet").write_text("key,text\na,b\n")
    with open_cache(tmp_path / "c") as c:
        with pytest.raises(CacheError, match="not a readable Parquet file"):
            c.from_parquet(tmp_path / "x.parquet")
        with pytest.raises(CacheError, match="cannot read"):
            c.from_parquet(tmp_path / "missing.parquet")
        assert c.count() == 0


# -- streaming and safety -----------------------------------------------------------------------


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_export_leaves_no_file(filled, tmp_path, monkeypatch, error):
    """An error on the 2nd chunk leaves the old file untouched and no temporary file behind."""
    target = tmp_path / "out" / "x.parquet"
    target.parent.mkdir()
    target.write_bytes(b"previous export")
    real_write = pq.ParquetWriter.write_table
    calls = []

    def failing_write(self, table, *args, **kwargs):
        calls.append(table.num_rows)
        if len(calls) == 2:
            raise error
        return real_write(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", failing_write)
    with pytest.raises(type(error)):
        filled.to_parquet(target, chunk_size=2)
    assert calls == [2, 2]
    assert target.read_bytes() == b"previous export"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.parquet"]


def test_export_streams_in_chunks(filled, tmp_path, monkeypatch):
    """to_parquet writes chunk_size rows at a time, never the whole cache at once."""
    sizes = []
    real_write = pq.ParquetWriter.write_table
    monkeypatch.setattr(pq.ParquetWriter, "write_table",
                        lambda self, t, *a, **k: (sizes.append(t.num_rows), real_write(self, t, *a, **k))[1])
    assert filled.to_parquet(tmp_path / "x.parquet", chunk_size=4)["rows"] == 6
    assert sizes == [4, 2]


def test_progress_bar_only_when_asked_or_large(filled, tmp_path, capsys):
    """progress=True draws a bar to the end; a small export draws nothing by default."""
    filled.to_parquet(tmp_path / "quiet.parquet")
    assert capsys.readouterr().err == ""
    filled.to_parquet(tmp_path / "loud.parquet", progress=True, chunk_size=4)
    assert "6/6" in capsys.readouterr().err


def test_cache_written_by_several_processes_exports_whole(tmp_path):
    """Three processes writing one cache at once: the export holds every row exactly once."""
    directory, go_file = tmp_path / "shared", tmp_path / "go"
    script = Path(__file__).with_name("_cache_writer_proc.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    procs = [subprocess.Popen([sys.executable, str(script), str(directory), str(w), "300", str(go_file)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for w in range(3)]
    try:
        go_file.write_text("go")
        errors = [p.communicate(timeout=60)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    with open_cache(directory) as c:
        assert c.to_parquet(tmp_path / "x.parquet", chunk_size=128)["rows"] == 900
    keys = pq.read_table(tmp_path / "x.parquet")["key"].to_pylist()
    assert len(set(keys)) == 900


def test_api_key_never_reaches_cache_or_export(srv, tmp_path):
    """After a real run with a recognisable key, neither the SQLite files (WAL too) nor the export hold it."""
    config = MinimaLlmConfig(base_url=srv.base_url, model="mock-model", api_key=KEY,
                             cache_dir=str(tmp_path / "c"), rpm=0)
    backend = OpenAIMinimaLlm(config)
    try:
        asyncio.run(backend.run_batched(requests(), progress=False))
        db_files = sorted((tmp_path / "c").iterdir())  # read while open: the WAL still exists
        assert any(p.name.endswith("-wal") for p in db_files)
        for path in db_files:
            assert KEY.encode() not in path.read_bytes(), path
        view(backend).to_parquet(tmp_path / "x.parquet")
    finally:
        backend.close()
    assert srv.requests_total == len(PROMPTS)  # the key was sent and accepted
    assert KEY.encode() not in (tmp_path / "x.parquet").read_bytes()
    rows = pq.read_table(tmp_path / "x.parquet").to_pylist()
    assert len(rows) == len(PROMPTS) and not any(KEY in str(r) for r in rows)


# -- stats and opening --------------------------------------------------------------------------


def test_stats_numbers(filled):
    """stats counts rows per model and namespace, sums tokens, and gives the time range."""
    stats = filled.stats()
    assert stats["rows"] == 6
    assert stats["models"] == {"m1": 4, "m2": 2}
    assert stats["namespaces"] == {None: 3, "a": 3}
    assert (stats["input_tokens"], stats["output_tokens"]) == (150, 15)
    assert stats["oldest"] == "2024-05-01T00:00:00+00:00" and stats["newest"] == "2024-05-06T00:00:00+00:00"
    assert stats["file_size_bytes"] > 0
    assert filled.stats(model="m2")["rows"] == 2


def test_open_cache_accepts_the_db_file_and_creates_empty(tmp_path):
    """open_cache takes the directory or its minima_llm.db; a new directory gets an empty cache."""
    with open_cache(tmp_path / "new") as c:
        assert c.count() == 0
    with open_cache(tmp_path / "new" / "minima_llm.db") as c:
        assert c.path == tmp_path / "new" / "minima_llm.db"
    with pytest.raises(CacheError, match="no minima_nb cache"):
        open_cache(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()


def test_view_of_a_backend_sees_its_fresh_answers(srv, tmp_path):
    """view(backend) shows the backend's own cache, rows queued a moment ago included."""
    config = MinimaLlmConfig(base_url=srv.base_url, model="mock-model", api_key=KEY,
                             cache_dir=str(tmp_path / "c"), rpm=0)
    backend = OpenAIMinimaLlm(config)
    try:
        asyncio.run(backend.generate(requests(["What is 2+2?"])[0]))
        assert view(backend).to_pandas()["text"].tolist() == ["4"]
        assert view(backend.cache).count() == 1
    finally:
        backend.close()
    with pytest.raises(CacheError, match="no prompt cache"):
        view(OpenAIMinimaLlm(MinimaLlmConfig(base_url=srv.base_url, model="m", rpm=0)))
