"""Tests for `minima-nb cache ...` (stats, export, import, clear), run as real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from minima_nb.cache import CacheRow, PromptCache

_REPO = Path(__file__).resolve().parents[1]
T0 = 1714521600.0  # 2024-05-01T00:00:00Z


def cli(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with a clean environment: no OPENAI_* nor CACHE_DIR unless given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_") and k != "CACHE_DIR"}
    return subprocess.run([sys.executable, "-m", "minima_nb.cli", "cache", *args], cwd=_REPO,
                          input=stdin if stdin is not None else "", capture_output=True, text=True,
                          env={**base, **env}, timeout=60)


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr


@pytest.fixture
def cache_dir(tmp_path):
    """A cache of three rows: two of model m1, one of m2, with tokens."""
    directory = tmp_path / "cache"
    with PromptCache(directory) as cache:
        for i, model in enumerate(["m1", "m1", "m2"]):
            cache.put(CacheRow(f"k{i}", None, model, [{"role": "user", "content": f"q{i}"}], {},
                               f"a{i}", input_tokens=100, output_tokens=10, created_at=T0 + i * 86400))
    return directory


def count(directory: Path) -> int:
    with PromptCache(directory) as cache:
        return cache.count()


def test_stats_prints_aligned_lines(cache_dir):
    """stats DIR prints rows, models, tokens, size and dates, one aligned line each."""
    result = cli("stats", str(cache_dir))
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["rows"] == "3" and lines["models"] == "m1 2, m2 1"
    assert lines["tokens"] == "300 in, 30 out"
    assert lines["oldest"].startswith("2024-05-01") and lines["newest"].startswith("2024-05-03")
    assert len({line.index(line.split(None, 1)[1]) for line in result.stdout.splitlines()}) == 1


def test_stats_reads_cache_dir_or_asks_for_it(cache_dir):
    """Without DIR, stats uses $CACHE_DIR; with neither it is a one-line usage error."""
    assert "rows        3" in cli("stats", CACHE_DIR=str(cache_dir)).stdout
    assert_one_line_error(cli("stats"), 2, "CACHE_DIR")


def test_export_then_import_into_another_dir(cache_dir, tmp_path):
    """export --model writes those rows; import into a new dir inserts them, then skips them."""
    out = tmp_path / "m1.parquet"
    exported = cli("export", str(cache_dir), str(out), "--model", "m1", "--no-raw")
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith("exported 2 rows") and len(exported.stdout.splitlines()) == 1
    assert pq.read_table(out)["model"].to_pylist() == ["m1", "m1"]
    first = cli("import", str(tmp_path / "other"), str(out))
    assert "2 inserted, 0 replaced, 0 skipped" in first.stdout, first.stderr
    again = cli("import", str(tmp_path / "other"), str(out), "--replace")
    assert "0 inserted, 0 replaced, 2 skipped" in again.stdout, again.stderr
    assert count(tmp_path / "other") == 2


def test_clear_asks_and_deletes_only_on_yes(cache_dir):
    """clear asks 'Delete N rows'; 'n' and end-of-input delete nothing; 'y' deletes."""
    refused = cli("clear", str(cache_dir), "--model", "m1", stdin="n\n")
    assert "Delete 2 rows from" in refused.stdout and "[y/N]" in refused.stdout
    assert refused.returncode != 0 and count(cache_dir) == 3
    assert cli("clear", str(cache_dir), stdin="").returncode != 0 and count(cache_dir) == 3
    accepted = cli("clear", str(cache_dir), "--model", "m1", stdin="y\n")
    assert accepted.returncode == 0 and "deleted 2 rows" in accepted.stdout
    assert count(cache_dir) == 1


def test_clear_yes_deletes_without_asking(cache_dir):
    """clear --yes --since deletes the matching rows without a question."""
    result = cli("clear", str(cache_dir), "--since", "2024-05-02", "--yes")
    assert result.returncode == 0 and "[y/N]" not in result.stdout
    assert count(cache_dir) == 1


def test_missing_cache_dir_is_an_error_and_not_created(tmp_path):
    """stats, export and clear on a directory without a cache fail in one line and create nothing."""
    missing = tmp_path / "missing"
    for args in (["stats", str(missing)], ["export", str(missing), str(tmp_path / "x.parquet")],
                 ["clear", str(missing), "--yes"]):
        assert_one_line_error(cli(*args), 1, "no minima_nb cache")
    assert not missing.exists() and not (tmp_path / "x.parquet").exists()


def test_bad_parquet_is_an_error_and_creates_no_cache(tmp_path):
    """import of a non-Parquet file fails in one line and leaves no cache behind."""
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    assert_one_line_error(cli("import", str(tmp_path / "new"), str(bad)), 1, "not a readable Parquet file")
    assert not (tmp_path / "new").exists()


def test_bad_date_is_a_usage_error(cache_dir, tmp_path):
    """An unparseable --since is a one-line usage error (exit 2) naming the option."""
    result = cli("export", str(cache_dir), str(tmp_path / "x.parquet"), "--since", "last week")
    assert_one_line_error(result, 2, "--since", "ISO 8601")
