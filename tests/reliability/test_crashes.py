"""Crashes and contention: SIGKILL, four processes on one cache, Ctrl-C in a script.

Each batch runs in a real subprocess (tests/reliability/_batch_worker.py) against a mock server
in this test process, so the server's per-prompt counters survive the worker's death. The cache
file is then read with plain sqlite3. tests/test_resume.py kills one run at the half-way mark;
these kill at random points, share one cache between processes, and interrupt with SIGINT.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minima_nb.testing import MockServer

from ._support import (
    expected,
    integrity,
    stored_prompts,
    stored_rows,
    subprocess_env,
    worker_command,
    write_spec,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")


def start_worker(spec: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(worker_command(spec), env=subprocess_env(), stdout=out, stderr=out)


def signal_after(srv: MockServer, proc: subprocess.Popen, requests_seen: int, sig: int) -> None:
    """Send ``sig`` to ``proc`` once the server has seen ``requests_seen`` requests (30 s at most)."""
    deadline = time.monotonic() + 30
    while srv.requests_total < requests_seen and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(sig)


def asked(srv: MockServer, prompts: list[str]) -> set[str]:
    return {p for p in prompts if srv.requests_for(p)}


def results_of(out_file: Path) -> list[tuple[str, str, bool]]:
    return [(r["request_id"], r["text"], r["cached"]) for r in json.loads(out_file.read_text())]


def run_to_completion(spec: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(worker_command(spec), env=subprocess_env(), capture_output=True,
                          timeout=timeout)


KILL_COUNT = 1200


@pytest.mark.parametrize("seed", [11, 22, 33])
@pytest.mark.timeout(90)
def test_sigkill_at_a_random_point_then_rerun_asks_only_what_was_not_committed(seed, tmp_path):
    """SIGKILL after a random number of requests; the re-run asks only uncommitted prompts and ends complete."""
    prompts = [f"kill-{seed}-{i}" for i in range(KILL_COUNT)]
    kill_after = random.Random(seed).randrange(1, KILL_COUNT)
    cache_dir, out_file = tmp_path / "cache", tmp_path / "results.json"
    with MockServer(latency_s=0.01) as srv:
        spec = write_spec(tmp_path / "spec.json", base_url=srv.base_url, cache_dir=cache_dir,
                          out_file=out_file, prompts=prompts)
        first = start_worker(spec, tmp_path / "first.log")
        try:
            signal_after(srv, first, kill_after, signal.SIGKILL)
        finally:
            first.kill()
            first.wait(timeout=30)
        asked_first = asked(srv, prompts)
        stored = stored_prompts(cache_dir)
        integrity_after_kill = integrity(cache_dir)
        srv.reset_counts()
        second = run_to_completion(spec)
        asked_second, requests_second = asked(srv, prompts), srv.requests_total

    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()
    assert second.returncode == 0, second.stderr.decode()
    assert integrity_after_kill == "ok"
    assert 0 < len(asked_first) < KILL_COUNT, kill_after
    assert stored <= asked_first
    # Nothing committed before the kill is asked again; the rest is asked exactly once.
    assert asked_second == set(prompts) - stored
    assert requests_second == len(asked_second)
    assert results_of(out_file) == [(f"row-{i}", expected(p), p in stored) for i, p in enumerate(prompts)]
    assert integrity(cache_dir) == "ok"
    assert len(stored_rows(cache_dir)) == KILL_COUNT


@pytest.mark.timeout(120)
def test_four_processes_with_overlapping_batches_share_one_cache(tmp_path):
    """Four processes, 1,500 prompts each, half shared, one cache dir: no error, no lost or duplicate row."""
    shared = [f"shared {i}" for i in range(750)]
    cache_dir = tmp_path / "cache"
    jobs = []
    with MockServer(latency_s=0.002) as srv:
        for n in range(4):
            own = [f"own {n} {i}" for i in range(750)]
            prompts = shared + own
            random.Random(n).shuffle(prompts)  # the shared prompts meet in a different order
            out_file = tmp_path / f"results-{n}.json"
            spec = write_spec(tmp_path / f"spec-{n}.json", base_url=srv.base_url,
                              cache_dir=cache_dir, out_file=out_file, prompts=prompts)
            jobs.append((prompts, out_file, subprocess.Popen(
                worker_command(spec), env=subprocess_env(), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE)))
        outputs = [proc.communicate(timeout=100) for _, _, proc in jobs]

    for (prompts, out_file, proc), (stdout, stderr) in zip(jobs, outputs, strict=True):
        assert proc.returncode == 0, stderr.decode()
        assert stdout == b"" and stderr == b""  # nothing reaches the user: no error, no warning
        assert [text for _, text, _ in results_of(out_file)] == [expected(p) for p in prompts]
    every_prompt = set(shared) | {p for prompts, _, _ in jobs for p in prompts}
    rows = stored_rows(cache_dir)
    assert len(rows) == len(every_prompt) == 750 * 5
    assert len({key for key, _, _ in rows}) == len(rows)
    assert {prompt for _, prompt, _ in rows} == every_prompt
    assert all(text == expected(prompt) for _, prompt, text in rows)
    assert integrity(cache_dir) == "ok"


@pytest.mark.timeout(90)
def test_sigint_in_a_script_stops_quickly_keeps_finished_answers_and_rerun_completes(tmp_path):
    """Ctrl-C during run_sync(backend.run_batched(...)): exits promptly, answers received are cached, re-run completes."""
    prompts = [f"ctrl-c {i}" for i in range(1500)]
    workers = 8
    cache_dir, out_file = tmp_path / "cache", tmp_path / "results.json"
    with MockServer(latency_s=0.05) as srv:
        spec = write_spec(tmp_path / "spec.json", base_url=srv.base_url, cache_dir=cache_dir,
                          out_file=out_file, prompts=prompts, workers=workers, bridge="run_sync")
        proc = subprocess.Popen(worker_command(spec), env=subprocess_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            signal_after(srv, proc, 200, signal.SIGINT)
            interrupted_at = time.monotonic()
            stdout, stderr = proc.communicate(timeout=30)
            exit_after = time.monotonic() - interrupted_at
        finally:
            proc.kill()
        asked_first = asked(srv, prompts)
        stored = stored_prompts(cache_dir)
        srv.reset_counts()
        rerun = write_spec(tmp_path / "rerun.json", base_url=srv.base_url, cache_dir=cache_dir,
                           out_file=out_file, prompts=prompts, workers=64, bridge="run_sync")
        second = run_to_completion(rerun)
        asked_second = asked(srv, prompts)

    assert proc.returncode == 130 and stdout == b"interrupted\n", stderr.decode()
    assert b"Traceback" not in stderr and b"Exception ignored" not in stderr, stderr.decode()
    assert exit_after < 10  # liveness: the cancel waits at most a couple of seconds for cleanup
    assert 0 < len(asked_first) < len(prompts)
    # Every answer that arrived is in the cache; only requests in flight at Ctrl-C are lost.
    assert stored <= asked_first
    assert len(asked_first - stored) <= workers
    assert second.returncode == 0, second.stderr.decode()
    assert asked_second == set(prompts) - stored
    assert [text for _, text, _ in results_of(out_file)] == [expected(p) for p in prompts]
    assert integrity(cache_dir) == "ok"
