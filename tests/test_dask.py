"""``ddf.minima`` on Dask's threaded scheduler (no cluster), against the mock over a real socket.

The cluster behaviour (worker processes, the key scan, the global budget, dead workers) is in
test_dask_cluster.py; here: laziness, equality with the pandas accessor, order and index,
details dtypes, failed rows as values, and the row counts of the in-process progress events.
"""

from __future__ import annotations

import subprocess
import sys
from collections import deque

import dask
import dask.dataframe as dd
import pandas as pd
import pytest
from _mock_backend import close_backend, make_backend

import minima_nb.dask as mdask
from minima_nb.errors import ConfigError
from minima_nb.integrations.dask import worker
from minima_nb.notebook.accessor import DETAIL_DTYPES
from minima_nb.testing import MockServer


@pytest.fixture
def llm(srv, tmp_path):
    backend = make_backend(srv, tmp_path / "cache")
    yield backend
    worker.close_engines()  # the engines this process built for the partitions
    close_backend(backend)


def frame(n: int = 30) -> pd.DataFrame:
    """Prompts with a missing one, a non-monotonic index with a duplicate label, another column."""
    prompts = [f"question {i}" for i in range(n)]
    prompts[3] = None
    index = [7 * ((n - i) % n) for i in range(n)]
    index[5] = index[6]
    return pd.DataFrame({"prompt": prompts, "topic": [f"t{i % 4}" for i in range(n)]}, index=index)


def threaded(collection):
    return collection.compute(scheduler="threads")


def test_lazy_until_compute(srv, llm):
    """Nothing is sent while the graph is built or its meta read; compute sends each prompt once."""
    df = frame()
    ddf = dd.from_pandas(df, npartitions=4, sort=False)
    answers = ddf.minima.generate("prompt", backend=llm)
    wide = ddf.minima.generate("prompt", backend=llm, details=True)
    assert (answers.dtype, answers.name, list(wide.columns)) == ("string", "prompt", list(DETAIL_DTYPES))
    assert answers.npartitions == 4 and srv.requests_total == 0
    threaded(answers)
    assert srv.requests_total == len(df) - 1  # the missing prompt is not sent


def test_equal_to_pandas_accessor_order_and_index_kept(srv, llm):
    """Text and details equal df.minima.generate's on the same frame, in the frame's own order."""
    df = frame()
    ddf = dd.from_pandas(df, npartitions=3, sort=False)
    for prompt, options in [("prompt", {}), ("About {topic}: {prompt}", {"system": "Be brief."}),
                            ("prompt", {"model": "mock-model-large", "max_tokens": 3})]:
        got = threaded(ddf.minima.generate(prompt, backend=llm, **options))
        want = df.minima.generate(prompt, backend=llm, progress=False, **options)
        pd.testing.assert_series_equal(got, want)
        assert list(got.index) == list(df.index)
    got = threaded(ddf.minima.generate("prompt", backend=llm, details=True))
    want = df.minima.generate("prompt", backend=llm, details=True, progress=False)
    columns = ["text", "error", "finish_reason", "input_tokens", "output_tokens", "model"]
    pd.testing.assert_frame_equal(got[columns], want[columns])  # cached/latency differ by run


def test_details_dtypes_and_series_accessor(srv, llm):
    """details=True has the pandas accessor's nullable dtypes; series.minima answers the column."""
    ddf = dd.from_pandas(frame(12), npartitions=2, sort=False)
    wide = ddf["prompt"].minima.generate(backend=llm, details=True, name="answer")
    assert {c: str(t) for c, t in wide.dtypes.items()} == DETAIL_DTYPES
    out = threaded(wide)
    assert {c: str(t) for c, t in out.dtypes.items()} == DETAIL_DTYPES
    assert out.loc[out["text"].isna(), "error"].tolist() == ["missing prompt"]
    text = threaded(ddf["prompt"].minima.generate(backend=llm, name="answer"))
    assert text.name == "answer" and text.dropna().str.startswith("[mock-model] echo: question").all()


def test_failed_rows_are_values_not_task_errors(srv, llm, tmp_path):
    """A row that keeps failing is <NA> with its reason; the other rows of its partition are kept."""
    srv.script("question 2", ["500"] * 10)
    backend = make_backend(srv, tmp_path / "c2", max_attempts=2, base_backoff_s=0.0)
    ddf = dd.from_pandas(frame(8), npartitions=2, sort=False)
    out = threaded(ddf.minima.generate("prompt", backend=backend, details=True))
    failed = out[out["error"].notna() & (out["error"] != "missing prompt")]
    assert len(failed) == 1 and failed["error"].iloc[0].startswith("ServerError")
    assert out["text"].notna().sum() == 6
    close_backend(backend)


def test_aborted_batch_fails_its_rows_with_the_reason(tmp_path):
    """A 401 on every row aborts the batch; the rows come back failed with why, not a task error."""
    with MockServer(require_api_key="sk-right") as server:
        backend = make_backend(server, tmp_path / "c", api_key="sk-wrong")
        ddf = dd.from_pandas(frame(8), npartitions=2, sort=False)
        out = threaded(ddf.minima.generate("prompt", backend=backend, details=True))
        errors = out["error"].dropna()
        assert len(errors) == 8 and "missing prompt" in errors.tolist()
        assert all(e.startswith(("AuthError", "BatchAborted")) for e in errors if e != "missing prompt")
        assert "sk-wrong" not in " ".join(errors)
        worker.close_engines()
        close_backend(backend)


def test_wrong_column_fails_at_build_time(srv, llm):
    """A prompt that is neither a column nor a template fails when generate() is called."""
    ddf = dd.from_pandas(frame(8), npartitions=1)
    with pytest.raises(KeyError, match="not a column"):
        ddf.minima.generate("nope", backend=llm)
    with pytest.raises(KeyError, match="missing"):
        ddf.minima.generate("{missing}", backend=llm)
    assert srv.requests_total == 0


def test_compute_counts_rows_from_progress_events(srv, llm):
    """minima_nb.dask.compute / progress() count every row once, cached rows as cached."""
    df = frame(20)
    answers = dd.from_pandas(df, npartitions=4, sort=False).minima.generate("prompt", backend=llm)
    with dask.config.set(scheduler="threads"):
        with mdask.progress(progress=False) as first:
            threaded(answers)
        out = mdask.compute(answers, progress=False)
    assert first.totals()["done"] == 20 and first.totals()["cached"] == 0
    assert out.notna().sum() == 19 and srv.requests_total == 19  # the second run: all cached


def test_plain_compute_prints_heartbeat_and_summary(tmp_path, capsys):
    """Outside a notebook a plain .compute() writes minima's heartbeat and its summary line."""
    slow = MockServer(latency_s=0.01).start()
    backend = make_backend(slow, tmp_path / "c", batch={"heartbeat_s": 0.05, "num_workers": 4})
    df = pd.DataFrame({"prompt": [f"beat {i}" for i in range(120)]})
    answers = dd.from_pandas(df, npartitions=4).minima.generate("prompt", backend=backend)
    capsys.readouterr()
    out = answers.compute(scheduler="threads")
    lines = capsys.readouterr().err.splitlines()
    assert out.notna().all()
    beats = [line for line in lines if line.startswith("minima (dask): ") and "| sent" in line]
    assert beats, lines  # at least one heartbeat while it ran
    assert lines[-1].startswith("minima (dask): done 120/120 in ")
    assert "(0 cached, 0 failed, 120 sent," in lines[-1]
    dask.compute(answers, scheduler="threads")  # dask.compute: its own view, all cached
    assert "(120 cached, 0 failed, 0 sent," in capsys.readouterr().err.splitlines()[-1]
    last = mdask.last_progress()
    assert (last.total, last.done, last.cached, last.sent) == (120, 120, 120, 0)
    worker.close_engines()
    close_backend(backend)
    slow.stop()


def test_partial_compute_closes_with_what_ran(srv, llm):
    """head() runs one partition: its view closes when the local computation ends, not later."""
    df = pd.DataFrame({"prompt": [f"head {i}" for i in range(40)]})
    answers = dd.from_pandas(df, npartitions=4).minima.generate("prompt", backend=llm,
                                                               progress="text")
    with dask.config.set(scheduler="threads"):
        answers.head(3)
        first = mdask.last_progress()
        answers.compute()
    last = mdask.last_progress()
    assert (first.total, first.done) == (10, 10)  # one partition of four
    assert (last.total, last.done, last.cached) == (40, 40, 10)  # a new view, not the old one


def test_view_counts_a_rerun_once_and_stays_closed():
    """A partition Dask re-runs is counted once; events after a view closed open nothing."""
    from minima_nb.integrations.dask.live import Display, Hub

    hub = Hub()
    hub.register("tok", Display(False, label="t", npartitions=2), None)

    def event(part, attempt, final, done):
        hub.handle({"token": "tok", "part": part, "attempt": attempt, "final": final,
                    "total": 10, "done": done, "cached": 0, "failed": 0, "retrying": 0,
                    "in_flight": 0, "sent": done, "received": done, "input_tokens": 0,
                    "output_tokens": 0, "latency_sum": 0.0, "last_error": None})

    event(0, "a0", False, 4)
    event(0, "a0-again", False, 2)  # the worker running it died: a new attempt replaces it
    event(0, "a0-again", True, 10)
    event(1, "b1", False, 3)
    event(0, "a0-third", True, 10)  # a finished partition re-run: already counted
    assert hub.history == deque() and hub._open["tok"].view.totals()["done"] == 13
    event(1, "b1", True, 10)  # every partition reported: the view closes
    [(token, status, final)] = hub.history
    assert (token, status, final.total, final.done, final.sent) == ("tok", "done", 20, 20, 20)
    event(1, "b1", True, 10)  # a late copy of a closed view's event
    assert len(hub.history) == 1 and not hub._open
    event(0, "new", False, 1)  # the next computation of the same collection: a new view
    assert hub._open["tok"].view.totals()["done"] == 1


def test_generate_rejects_a_progress_it_cannot_show(srv, llm):
    """progress= takes True/False or a kind; a sink object cannot travel to a later compute."""
    ddf = dd.from_pandas(frame(8), npartitions=2)
    with pytest.raises(ConfigError, match="progress="):
        ddf.minima.generate("prompt", backend=llm, progress=object())


def test_import_without_dask_says_how_to_install():
    """Without dask, `import minima_nb.dask` says which extra to install; `import minima_nb` works."""
    code = ("import sys\nsys.modules['dask'] = None\nimport minima_nb\n"
            "try:\n    import minima_nb.dask\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'minima-nb[dask]'" in out.stdout


def test_budget_schedule_has_no_burst_and_follows_the_server():
    """The scheduler's schedule: evenly spaced leases, no credit for idle time, lowered and paused."""
    from minima_nb.integrations.dask.budget import HEADROOM, Schedule

    now = [100.0]
    schedule = Schedule(600, clock=lambda: now[0])
    interval = 60.0 / (600 * HEADROOM)
    assert schedule.lease(4) == pytest.approx((0.0, interval, 4))
    assert schedule.lease(2)[0] == pytest.approx(4 * interval)  # queued behind the first lease
    now[0] += 60.0  # idle for a minute: still no burst
    assert schedule.lease(3) == pytest.approx((0.0, interval, 3))
    first, lowered, _ = schedule.lease(1, server_rpm=300)
    assert lowered == pytest.approx(2 * interval) and first == pytest.approx(3 * interval)
    assert schedule.lease(1, pause_s=10.0)[0] == pytest.approx(10.0)


def test_sweep_lazy_meta_and_equal_to_pandas_sweep(srv, llm):
    """ddf.minima.sweep: lazy, its meta = the computed dtypes, the rows of df.minima.sweep."""
    df = frame(12)
    ddf = dd.from_pandas(df, npartitions=3, sort=False)
    grid = {"model": ["mock-model", "mock-model-large"], "temperature": [0, 0.7]}
    runs = ddf.minima.sweep("About {topic}: {prompt}", backend=llm, **grid)
    assert srv.requests_total == 0 and list(runs.columns[:3]) == ["row", "model", "temperature"]
    got = threaded(runs)
    want = df.minima.sweep("About {topic}: {prompt}", backend=llm, progress=False, **grid)
    assert dict(got.dtypes) == dict(runs.dtypes)
    columns = ["model", "temperature", "text", "error", "input_tokens", "output_tokens"]
    pd.testing.assert_frame_equal(got[columns].reset_index(drop=True), want[columns])
    assert got["row"].tolist() == want["row"].tolist()  # every row's label, in the frame's order
    assert srv.requests_total == 11 * 4  # the missing prompt is not sent, under any combination
    last = mdask.last_progress()
    assert (last.total, last.done) == (48, 48)  # one bar of (row, combination) pairs
    with pytest.raises(ValueError, match="no values"):
        ddf.minima.sweep("prompt", backend=llm, temperature=[])


def test_local_computation_ending_leaves_cluster_views_open():
    """A local scheduler's computation ending (e.g. one the in-process scheduler runs) closes
    only the views of partitions it ran, never a cluster computation's."""
    from minima_nb.integrations.dask.live import Display, Hub

    hub = Hub()
    hub.register("tok", Display(False, label="t", npartitions=2), None)
    message = {"token": "tok", "part": 0, "attempt": "a", "final": False, "total": 5, "done": 1,
               "cached": 0, "failed": 0, "retrying": 0, "in_flight": 0, "sent": 1,
               "received": 1, "input_tokens": 0, "output_tokens": 0, "latency_sum": 0.0,
               "last_error": None}
    hub.local_started()
    hub._on_event((0.0, message))  # a worker's event, through the client's subscription
    hub.local_finished(errored=False)
    assert "tok" in hub._open and not hub.history
    hub.register("loc", Display(False, label="t", npartitions=2), None)
    hub.local_started()
    hub._on_local({**message, "token": "loc", "attempt": "b"})  # a threaded-scheduler partition
    hub.local_finished(errored=False)
    assert list(hub._open) == ["tok"] and [(t, s) for t, s, _ in hub.history] == [("loc", "done")]


def test_no_new_bar_under_an_interrupted_cell():
    """A partition that starts after its cell was interrupted opens no bar; the next cell does."""
    from types import SimpleNamespace

    from minima_nb.integrations.dask.live import Display, Hub

    hub = Hub()
    hub.register("tok", Display(False, label="t", npartitions=3), None)
    message = {"token": "tok", "part": 0, "attempt": "a", "final": False, "total": 5, "done": 1,
               "cached": 0, "failed": 0, "retrying": 0, "in_flight": 0, "sent": 1,
               "received": 1, "input_tokens": 0, "output_tokens": 0, "latency_sum": 0.0,
               "last_error": None}
    hub._pre_run_cell()
    hub._on_event((0.0, message))
    hub._post_run_cell(SimpleNamespace(error_in_exec=KeyboardInterrupt(), error_before_exec=None))
    assert [status for _, status, _ in hub.history] == ["interrupted"]
    hub._on_event((0.0, {**message, "final": True, "done": 5}))  # the cancelled task finishing
    hub._on_event((0.0, {**message, "part": 1, "attempt": "late"}))  # one that slipped through
    assert not hub._open and len(hub.history) == 1
    hub._pre_run_cell()  # the user runs it again
    hub._on_event((0.0, {**message, "attempt": "again"}))
    assert list(hub._open) == ["tok"]
