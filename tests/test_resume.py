"""Acceptance test: a batch killed with SIGKILL half-way resumes from the cache on the next run.

The mock server runs in this test process, so its per-prompt counters survive the worker's
death; the worker (tests/_resume_worker.py) runs the batch in a subprocess with a cache in
``tmp_path``. The first run is killed once the server has seen about half the requests; the
second run must ask only for what the first did not commit, and end with the same answers as an
uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minima_nb.testing import MockServer, mock_answer

COUNT = 2000
WORKER = Path(__file__).with_name("_resume_worker.py")
REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [f"resume-{i}" for i in range(COUNT)]  # as _resume_worker.prompt() builds them

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")


def worker_command(base_url: str, cache_dir: Path, out_file: Path) -> list[str]:
    return [sys.executable, str(WORKER), base_url, str(cache_dir), str(out_file), str(COUNT)]


def worker_env() -> dict[str, str]:
    paths = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def kill_at_half(srv: MockServer, command: list[str], log: Path) -> subprocess.Popen:
    """Start the worker, SIGKILL it once the server has seen half the requests; return it dead."""
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(command, env=worker_env(), stdout=stderr, stderr=stderr)
    try:
        deadline = time.monotonic() + 30
        while srv.requests_total < COUNT // 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    return proc


def stored_prompts(cache_dir: Path) -> set[str]:
    """Prompts committed to the SQLite file, read with plain sqlite3 (no minima_nb code)."""
    (path,) = cache_dir.glob("*.db")
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT messages FROM responses").fetchall()
    return {json.loads(messages)[-1]["content"] for (messages,) in rows}


def integrity(cache_dir: Path) -> str:
    (path,) = cache_dir.glob("*.db")
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def test_killed_batch_resumes_without_asking_again(tmp_path):
    """After SIGKILL mid-batch, a re-run asks only for uncommitted prompts and gets every answer."""
    cache_dir, out_file, log = tmp_path / "cache", tmp_path / "results.json", tmp_path / "worker.log"
    with MockServer(latency_s=0.01) as srv:
        first = kill_at_half(srv, worker_command(srv.base_url, cache_dir, out_file), log)
        answered_first = {p for p in PROMPTS if srv.requests_for(p)}
        stored = stored_prompts(cache_dir)
        integrity_after_kill = integrity(cache_dir)
        srv.reset_counts()
        second = subprocess.run(worker_command(srv.base_url, cache_dir, out_file), env=worker_env(),
                                capture_output=True, timeout=60)
        asked_second = {p for p in PROMPTS if srv.requests_for(p)}
        requests_second = srv.requests_total

    assert first.returncode == -signal.SIGKILL, log.read_text()
    assert second.returncode == 0, second.stderr.decode()
    # The kill landed mid-batch, and the cache kept what the server had answered.
    assert 0 < len(answered_first) < COUNT
    assert integrity_after_kill == "ok"
    assert stored <= answered_first
    assert len(stored) >= 0.8 * len(answered_first), (len(stored), len(answered_first))
    # (a) the second run asked, once each, for exactly the prompts the first did not commit.
    assert asked_second.isdisjoint(stored)
    assert asked_second == set(PROMPTS) - stored
    assert requests_second == len(asked_second)
    # (b) the final results are those of an uninterrupted run.
    results = json.loads(out_file.read_text())
    expected = [mock_answer([{"role": "user", "content": p}], "mock-model") for p in PROMPTS]
    assert [r["request_id"] for r in results] == [f"row-{i}" for i in range(COUNT)]
    assert [r["text"] for r in results] == expected
    assert {p for p, r in zip(PROMPTS, results, strict=True) if r["cached"]} == stored
    # (c) the file is sound after both runs.
    assert integrity(cache_dir) == "ok"
    assert stored_prompts(cache_dir) == set(PROMPTS)
