"""``ddf.minima`` on a real ``LocalCluster`` of 2 worker processes, against the mock over a socket.

One cluster serves the module (starting one takes seconds). Covered: the same results as the
pandas accessor, the API key absent from the pickled graph and from the scheduler's state, a
worker without a key, ``share_key``, the engine closed when a worker stops.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time

import cloudpickle
import dask
import dask.dataframe as dd
import pandas as pd
import pytest
from _mock_backend import close_backend, make_backend
from distributed import Client, LocalCluster, wait

import minima_nb.dask as mdask
from minima_nb.export import open_cache
from minima_nb.integrations.dask import live
from minima_nb.testing import MockServer

KEY = "sk-dask-test-7f3a9c1e"
KEY_ENV = "MINIMA_DASK_TEST_KEY"


def local_cluster(n_workers: int = 2) -> LocalCluster:
    return LocalCluster(n_workers=n_workers, processes=True, threads_per_worker=1,
                        host="127.0.0.1", dashboard_address=":0")


@pytest.fixture(scope="module")
def server():
    with MockServer(require_api_key=KEY, latency_s=0.005) as s:
        yield s


@pytest.fixture(scope="module")
def client():
    """2 worker processes that inherit KEY_ENV from this process's environment."""
    os.environ[KEY_ENV] = KEY
    try:
        with local_cluster() as cluster, Client(cluster) as c:
            yield c
    finally:
        os.environ.pop(KEY_ENV, None)


@pytest.fixture
def llm(server, tmp_path):
    server.reset_counts()
    backend = make_backend(server, tmp_path / "cache", api_key=KEY)
    yield backend
    close_backend(backend)


def frame(n: int) -> pd.DataFrame:
    prompts = [f"cluster question {i}" for i in range(n)]
    prompts[1] = None
    return pd.DataFrame({"prompt": prompts}, index=[(i * 37) % 101 for i in range(n)])


def scheduler_state(dask_scheduler) -> bytes:
    """Everything the scheduler keeps that could hold a secret, pickled (run on the scheduler)."""
    import cloudpickle

    parts = [repr(vars(dask_scheduler)).encode()]
    for ts in dask_scheduler.tasks.values():
        parts.append(cloudpickle.dumps(ts.run_spec))
    parts.append(cloudpickle.dumps(dict(dask_scheduler.worker_plugins)))
    parts.append(cloudpickle.dumps(dask_scheduler.get_events()))
    parts.append(repr(dask_scheduler.plugins).encode())
    return b"".join(parts)


def test_same_results_as_pandas_on_two_worker_processes(client, server, llm):
    """Two worker processes answer every row; the result equals the pandas accessor's, in order."""
    df = frame(60)
    ddf = dd.from_pandas(df, npartitions=6, sort=False)
    answers = ddf.minima.generate("prompt", backend=llm, key_env=KEY_ENV)
    wide = ddf.minima.generate("Q: {prompt}", backend=llm, key_env=KEY_ENV, details=True)
    assert server.requests_total == 0  # lazy
    got, got_wide = mdask.compute(answers, wide, progress=False)
    want = df.minima.generate("prompt", backend=llm, progress=False)
    pd.testing.assert_series_equal(got, want)
    assert list(got_wide.index) == list(df.index) and got_wide["cached"].sum() == 0
    assert got_wide["error"].dropna().tolist() == ["missing prompt"]
    workers = {w for w in client.run(lambda: len(__import__("minima_nb.integrations.dask.worker",
                                                            fromlist=["_"])._engines)).values()}
    assert workers == {1} or workers == {1, 2}  # an engine per process, reused across partitions


def test_key_never_in_graph_nor_scheduler(client, server, llm):
    """The pickled graph, the expression and the scheduler's state hold no trace of the key."""
    ddf = dd.from_pandas(frame(40), npartitions=4, sort=False)
    answers = ddf.minima.generate("prompt", backend=llm, key_env=KEY_ENV, rpm=6000)
    assert KEY.encode() not in cloudpickle.dumps(dict(answers.__dask_graph__()))
    assert KEY.encode() not in pickle.dumps(answers.expr)
    held = answers.persist()
    wait(held)
    assert KEY.encode() not in client.run_on_scheduler(scheduler_state)
    assert held.compute().notna().sum() == 39
    assert server.responses_by_status == {200: 39}  # the workers did send the key


def test_worker_without_key_fails_rows_with_how_to_fix(client, server, llm):
    """Workers without the variable fail every row saying how to give them a key; share_key fixes it."""
    env = "MINIMA_DASK_UNSET_KEY"
    ddf = dd.from_pandas(frame(20), npartitions=4, sort=False)
    out = mdask.compute(ddf.minima.generate("prompt", backend=llm, key_env=env, details=True),
                        progress=False)
    errors = out["error"].dropna()
    failed = errors[errors != "missing prompt"]
    assert len(failed) == 19 and out["text"].isna().all() and server.requests_total == 0
    assert failed.str.contains(f"no API key on this worker .*{env}.*share_key", regex=True).all()
    where = mdask.share_key(client, KEY, env=env)
    assert env in where and "never through the scheduler" in where
    assert KEY.encode() not in client.run_on_scheduler(scheduler_state)
    again = mdask.compute(ddf.minima.generate("prompt", backend=llm, key_env=env), progress=False)
    assert again.notna().sum() == 19 and server.responses_by_status == {200: 19}


def test_engine_closed_when_worker_stops(client, server, tmp_path, capfd):
    """Closing a cluster closes each worker's engine: no "Unclosed client session" from aiohttp."""
    backend = make_backend(server, tmp_path / "cache", api_key=KEY)
    try:  # a cluster of its own (KEY_ENV is in the environment while the module's client lives)
        with local_cluster(1) as cluster, Client(cluster) as own:
            ddf = dd.from_pandas(frame(10), npartitions=2, sort=False)
            out = mdask.compute(ddf.minima.generate("prompt", backend=backend, key_env=KEY_ENV),
                                client=own, progress=False)
            assert out.notna().sum() == 9
    finally:
        close_backend(backend)
    captured = capfd.readouterr()
    assert "Unclosed" not in captured.err + captured.out


class Arrivals:
    """The mock's clock, recording when each request reached it (its rate check reads the clock)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self) -> float:
        now = time.monotonic()
        self.times.append(now)
        return now

    def share_used(self, rpm: int) -> float:
        """Requests per minute between the first and the last arrival, as a share of ``rpm``."""
        span = self.times[-1] - self.times[0]
        return (len(self.times) - 1) / span * 60.0 / rpm


@pytest.mark.parametrize("sizes", [[10] * 10, [40, 15, 15, 15, 15]], ids=["even", "skewed"])
def test_global_budget_no_429_and_budget_used(client, tmp_path, sizes):
    """rpm is the whole cluster's: the mock enforcing it sees no 429 and >= 95 % of it used."""
    rpm = 1200
    arrivals = Arrivals()
    with MockServer(rate_limit=rpm, rate_window_s=4.0, latency_s=0.02, clock=arrivals) as limited:
        backend = make_backend(limited, tmp_path / "cache", api_key=KEY)
        parts = [pd.DataFrame({"prompt": [f"budget {sizes} {p}-{i}" for i in range(n)]})
                 for p, n in enumerate(sizes)]
        ddf = dd.from_delayed([dask.delayed(part) for part in parts], meta=parts[0].iloc[:0],
                              verify_meta=False)
        out = mdask.compute(ddf.minima.generate("prompt", backend=backend, key_env=KEY_ENV, rpm=rpm),
                            progress=False)
        close_backend(backend)
    assert out.notna().sum() == sum(sizes)
    assert limited.responses_by_status == {200: sum(sizes)}  # zero 429s
    assert arrivals.share_used(rpm) >= 0.95


def test_progress_events_count_rows_exactly(client, server, llm):
    """Events from both workers add up to every row once; a re-run counts them all as cached."""
    ddf = dd.from_pandas(frame(50), npartitions=5, sort=False)
    answers = ddf.minima.generate("prompt", backend=llm, key_env=KEY_ENV)
    with mdask.progress(progress=False) as first:
        answers.compute()
    # The same rows again (a new collection: right after the first compute Dask may still hold
    # that one's results and run nothing).
    again = ddf.minima.generate("prompt", backend=llm, key_env=KEY_ENV, name="again")
    with mdask.progress(progress=False) as second:
        again.compute()
    assert {k: first.totals()[k] for k in ("total", "done", "cached", "failed")} == {
        "total": 50, "done": 50, "cached": 0, "failed": 0}
    assert first.totals()["sent"] == 49 and first.events >= 10  # a start and an end per partition
    assert (second.totals()["done"], second.totals()["cached"]) == (50, 49)


def _counts(snapshot):
    return (snapshot.total, snapshot.done, snapshot.cached, snapshot.failed, snapshot.sent)


def test_plain_compute_shows_one_exact_view_per_computation(client, server, llm, capfd):
    """compute(), dask.compute, client.compute().result() and persist() each get one view,
    closed with the exact counts of both workers' rows, and its summary line outside a notebook."""
    hub = live.hub()
    ddf = dd.from_pandas(frame(40), npartitions=4, sort=False)

    def generate(template):
        return ddf.minima.generate(template, backend=llm, key_env=KEY_ENV, progress="text")

    before = len(hub.history)
    out = generate("A: {prompt}").compute()
    assert _counts(mdask.last_progress()) == (40, 40, 0, 0, 39) and out.notna().sum() == 39
    (both,) = dask.compute(generate("B: {prompt}"))
    assert _counts(mdask.last_progress()) == (40, 40, 0, 0, 39)
    client.compute(generate("C: {prompt}")).result()
    assert _counts(mdask.last_progress()) == (40, 40, 0, 0, 39)
    held = generate("D: {prompt}").persist()
    wait(held)
    deadline = time.monotonic() + 10
    while len(hub.history) < before + 4 and time.monotonic() < deadline:
        time.sleep(0.02)  # persist() returns at once; its view closes when the rows are in
    assert _counts(mdask.last_progress()) == (40, 40, 0, 0, 39)
    assert [status for _, status, _ in list(hub.history)[before:]] == ["done"] * 4
    assert server.requests_total == 4 * 39
    summaries = [line for line in capfd.readouterr().err.splitlines()
                 if line.startswith("minima (dask): done 40/40")]
    assert len(summaries) == 4 and all("(0 cached, 0 failed, 39 sent," in s for s in summaries)


def test_sweep_on_two_worker_processes(client, server, llm):
    """ddf.minima.sweep on the cluster: the pandas sweep's rows, one exact view of the pairs."""
    df = frame(30)
    ddf = dd.from_pandas(df, npartitions=3, sort=False)
    runs = ddf.minima.sweep("prompt", backend=llm, key_env=KEY_ENV, temperature=[0, 0.5, 1])
    got = runs.compute()
    want = df.minima.sweep("prompt", backend=llm, progress=False, temperature=[0, 0.5, 1])
    assert dict(got.dtypes) == dict(runs.dtypes)
    pd.testing.assert_frame_equal(got[["model", "temperature", "text", "error"]].reset_index(drop=True),
                                  want[["model", "temperature", "text", "error"]])
    assert got["row"].tolist() == want["row"].tolist()
    assert _counts(mdask.last_progress()) == (90, 90, 0, 0, 87)


def test_shared_cache_on_one_host(client, server, llm):
    """Workers write the notebook's cache while they run: re-runs anywhere send nothing."""
    df = frame(40)
    ddf = dd.from_pandas(df, npartitions=4, sort=False)
    first = ddf.minima.generate("prompt", backend=llm, key_env=KEY_ENV).compute()
    assert server.requests_total == 39
    again = ddf.minima.generate("prompt", backend=llm, key_env=KEY_ENV).compute()
    local = df.minima.generate("prompt", backend=llm, progress=False)
    assert server.requests_total == 39
    pd.testing.assert_series_equal(again, first)
    pd.testing.assert_series_equal(local, first)


def test_collect_caches_from_per_worker_caches(client, server, llm, tmp_path):
    """local_cache=True: each worker keeps its own; collect_caches brings every row home once."""
    df = frame(40)
    ddf = dd.from_pandas(df, npartitions=4, sort=False)
    ddf.minima.generate("prompt", backend=llm, key_env=KEY_ENV, local_cache=True).compute()
    assert llm.cache.count() == 0  # nothing in the notebook's cache yet
    home = tmp_path / "home"
    counts = mdask.collect_caches(client, into=home)
    assert sum(c["inserted"] for c in counts.values()) == 39
    assert len(counts) == 2  # both workers answered some rows
    assert mdask.collect_caches(client, into=home) and open_cache(home).count() == 39
    at_home = make_backend(server, home, api_key=KEY)
    sent = server.requests_total
    df.minima.generate("prompt", backend=at_home, progress=False)
    assert server.requests_total == sent  # every answer came home
    close_backend(at_home)


def test_killed_worker_rows_committed_are_not_asked_again(client, tmp_path):
    """A worker killed mid-run: Dask reruns its partitions, committed rows are not sent again."""
    rows = 400
    with MockServer(latency_s=0.05) as slow:
        backend = make_backend(slow, tmp_path / "cache", api_key=KEY, max_outstanding=8)
        df = pd.DataFrame({"prompt": [f"kill {i}" for i in range(rows)]})
        answers = dd.from_pandas(df, npartitions=8).minima.generate(
            "prompt", backend=backend, key_env=KEY_ENV)
        pids = client.run(os.getpid)
        victim = sorted(pids)[0]

        def kill_when_busy() -> None:
            deadline = time.monotonic() + 30
            while slow.requests_total < 100 and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(pids[victim], signal.SIGKILL)

        token = next(reversed(live.hub()._displays))  # the computation generate() just announced
        killer = threading.Thread(target=kill_when_busy, daemon=True)
        killer.start()
        out = answers.compute()
        killer.join(timeout=30)
        assert out.notna().sum() == rows
        # One view, every row counted once although Dask re-ran the dead worker's partitions.
        # (Only this computation's views: a late event of an earlier test's may land meanwhile.)
        history = [entry for entry in live.hub().history if entry[0] == token]
        assert len(history) == 1, history
        last = history[0][2]
        assert (last.total, last.done, last.failed) == (rows, rows, 0), history
        duplicates = slow.requests_total - rows
        assert 0 <= duplicates <= 40, duplicates  # at most what was in flight or not committed
        again = answers.compute()
        assert slow.requests_total == rows + duplicates  # the re-run asks nothing again
        pd.testing.assert_series_equal(again, out)
        close_backend(backend)
