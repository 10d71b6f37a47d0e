"""The batch worker pool (``run_batched_callable``) and ``OpenAIMinimaLlm.run_batched``.

Pool tests drive ``run_batched_callable`` with plain coroutines; backend tests run against the
mock server on 127.0.0.1 with a real SQLite cache in ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from pathlib import Path

import pytest

from minima_nb.config import MinimaLlmConfig
from minima_nb.engine.backend import OpenAIMinimaLlm
from minima_nb.engine.pool import run_batched_callable
from minima_nb.errors import BatchAborted
from minima_nb.testing import MockServer, mock_answer
from minima_nb.types import BatchSnapshot, MinimaLlmFailure, MinimaLlmRequest, MinimaLlmResponse

WAIT_LIMIT = 2000  # iterations of a 5 ms poll: every wait below gives up after ~10 s


class RecordingSink:
    """A progress sink that keeps every snapshot and every close status."""

    def __init__(self) -> None:
        self.snapshots: list[BatchSnapshot] = []
        self.closes: list[str] = []
        self.draws = 0

    def update(self, snapshot: BatchSnapshot) -> None:
        self.snapshots.append(snapshot)

    def draw(self) -> None:
        self.draws += 1

    def close(self, status: str = "done") -> None:
        self.closes.append(status)

    @property
    def final(self) -> BatchSnapshot:
        return self.snapshots[-1]


def make_config(srv: MockServer, cache_dir: Path, **changes) -> MinimaLlmConfig:
    return MinimaLlmConfig(
        base_url=srv.base_url, model="mock-model", api_key="sk-test", rpm=0,
        base_backoff_s=0.01, max_backoff_s=0.05, timeout_s=1.0, cache_dir=str(cache_dir),
        **changes,
    )


def ask(prompt: str, request_id: str | None = None) -> MinimaLlmRequest:
    return MinimaLlmRequest(request_id or prompt, [{"role": "user", "content": prompt}])


def expected(prompt: str) -> str:
    return mock_answer([{"role": "user", "content": prompt}], "mock-model")


def with_backend(config: MinimaLlmConfig, body):
    """Run ``await body(backend)`` in a fresh loop, closing the backend whatever happens."""

    async def main():
        backend = OpenAIMinimaLlm(config)
        try:
            return await body(backend)
        finally:
            await backend.aclose()
            backend.close()

    return asyncio.run(main())


def cached_prompts(cache_dir: Path) -> list[str]:
    """The user prompts stored in the SQLite file, read with plain sqlite3."""
    (path,) = cache_dir.glob("*.db")
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT messages FROM responses").fetchall()
    return [json.loads(messages)[-1]["content"] for (messages,) in rows]


def fail(index: int, error_type: str = "ServerError", message: str = "boom") -> MinimaLlmFailure:
    return MinimaLlmFailure(request_id=str(index), error_type=error_type, message=message)


async def wait_until(condition) -> None:
    for _ in range(WAIT_LIMIT):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached within the wait limit")


async def cancel_after(done_at_least: int, *, num_workers: int, progress) -> list[int]:
    """Run 500 items of 2 ms each, cancel once ``done_at_least`` finished; the items done.

    Checks on the way that the cancel reaches the caller as CancelledError.
    """
    done: list[int] = []

    async def work(i: int) -> int:
        await asyncio.sleep(0.002)
        done.append(i)
        return i

    task = asyncio.ensure_future(run_batched_callable(list(range(500)), work, num_workers=num_workers,
                                                      progress=progress))
    await wait_until(lambda: len(done) >= done_at_least)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return done


# -- the pool ------------------------------------------------------------------------------------


def test_results_come_back_in_input_order():
    """Items finishing in random order still come back in input order."""
    rng = random.Random(7)
    delays = [rng.uniform(0, 0.005) for _ in range(60)]

    async def work(i: int) -> int:
        await asyncio.sleep(delays[i])
        return i * 10

    out = asyncio.run(run_batched_callable(range(60), work, num_workers=8, progress=False))
    assert out == [i * 10 for i in range(60)]


def test_none_results_keep_their_slots():
    """A ``None`` result stays in its own slot; nothing shifts."""

    async def work(i: int) -> int | None:
        await asyncio.sleep(0.001 * (i % 3))
        return None if i % 2 == 0 else i

    out = asyncio.run(run_batched_callable(list(range(9)), work, num_workers=3, progress=False))
    assert out == [None, 1, None, 3, None, 5, None, 7, None]


@pytest.mark.parametrize(("items", "workers", "busiest"), [(30, 4, 4), (3, 10, 3)])
def test_pool_runs_at_most_num_workers_at_once(items, workers, busiest):
    """More items than workers, or fewer: all answered, never more than the workers at once."""
    active = peak = 0

    async def work(i: int) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.002)
        active -= 1
        return i

    out = asyncio.run(run_batched_callable(list(range(items)), work, num_workers=workers, progress=False))
    assert out == list(range(items))
    assert peak == busiest


def test_empty_input_returns_empty_list():
    """No items: an empty list, and the function is never called."""
    calls = []

    async def work(i):
        calls.append(i)

    assert asyncio.run(run_batched_callable([], work, progress=False)) == []
    assert calls == []


def test_failure_budget_aborts_with_partial_results():
    """Past max_failures (minima-llm's meaning: more failures than it) the pool stops taking work
    and BatchAborted keeps one slot per input."""
    started, finished = [], set()

    async def work(i: int):
        started.append(i)
        await asyncio.sleep(0.001)
        finished.add(i)
        return fail(i) if i % 2 else f"ok {i}"

    with pytest.raises(BatchAborted) as info:
        asyncio.run(run_batched_callable(list(range(40)), work, num_workers=2, max_failures=3, progress=False))
    results = info.value.results
    assert len(results) == 40
    assert len(started) < 40
    assert sum(isinstance(r, MinimaLlmFailure) for r in results) >= 4
    for i, result in enumerate(results):
        assert (result is not None) == (i in finished)
    assert "max_failures=3" in info.value.message


def test_auth_failure_aborts_at_the_first_one():
    """An AuthError failure stops the batch at once, with its message, budget or not."""
    calls = []

    async def work(i: int):
        calls.append(i)
        return fail(i, "AuthError", "Incorrect API key provided") if i == 2 else i

    with pytest.raises(BatchAborted) as info:
        asyncio.run(run_batched_callable(list(range(20)), work, num_workers=1, max_failures=25, progress=False))
    assert calls == [0, 1, 2]
    assert "Incorrect API key provided" in info.value.message
    assert info.value.results[:3] == [0, 1, fail(2, "AuthError", "Incorrect API key provided")]
    assert info.value.results[3:] == [None] * 17


def test_programming_error_is_reraised_and_stops_every_worker():
    """A TypeError in async_fn propagates as is, and no worker keeps running afterwards."""
    calls = []

    async def work(i: int) -> int:
        calls.append(i)
        await asyncio.sleep(0.002)
        if i == 5:
            raise TypeError("bad item 5")
        return i

    async def main() -> None:
        with pytest.raises(TypeError, match="bad item 5"):
            await run_batched_callable(list(range(200)), work, num_workers=4, progress=False)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        seen = len(calls)
        await asyncio.sleep(0.02)
        assert len(calls) == seen < 200

    asyncio.run(main())


def test_cancel_propagates_and_leaves_no_task_running():
    """Cancelling the batch task raises CancelledError and stops every worker."""

    async def main() -> None:
        done = await cancel_after(8, num_workers=4, progress=False)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        seen = len(done)
        await asyncio.sleep(0.02)
        assert len(done) == seen < 500

    asyncio.run(main())


# -- progress events -----------------------------------------------------------------------------


def test_progress_snapshots_grow_to_a_final_done_snapshot():
    """The sink sees snapshots whose done never decreases and ends at done == total, closed once."""
    sink = RecordingSink()

    async def work(i: int) -> int:
        await asyncio.sleep(0.001)
        return i

    asyncio.run(run_batched_callable(list(range(25)), work, num_workers=5, progress=sink))
    dones = [s.done for s in sink.snapshots]
    assert len(dones) >= 2
    assert dones == sorted(dones)
    assert (sink.final.done, sink.final.total) == (25, 25)
    assert sink.closes == ["done"]


def test_progress_counts_cached_and_failed_rows(srv, tmp_path):
    """A partly cached batch with failures ends with done == total and the right counts."""
    config = make_config(srv, tmp_path)
    prompts = [f"p{i}" for i in range(10)]
    srv.script("p4", ["400"])
    srv.script("p7", ["400"])
    sink = RecordingSink()

    async def body(backend):
        await backend.run_batched([ask(p) for p in prompts[:3]], progress=False)
        return await backend.run_batched([ask(p) for p in prompts], progress=sink)

    with_backend(config, body)
    final = sink.final
    assert (final.total, final.done, final.cached, final.failed) == (10, 10, 3, 2)
    assert sink.closes == ["done"]


def test_progress_closes_aborted_on_batch_aborted():
    """A batch stopped by its failure budget closes the sink with "aborted"."""
    sink = RecordingSink()

    async def work(i: int):
        return fail(i)

    with pytest.raises(BatchAborted):
        asyncio.run(run_batched_callable(list(range(10)), work, num_workers=1, max_failures=2, progress=sink))
    assert sink.closes == ["aborted"]
    assert sink.final.failed == 3  # more than max_failures=2


def test_progress_closes_interrupted_on_cancel():
    """A cancelled batch closes the sink with "interrupted"."""
    sink = RecordingSink()
    done = asyncio.run(cancel_after(4, num_workers=2, progress=sink))
    assert sink.closes == ["interrupted"]
    assert sink.final.done == len(done)


def test_second_cancel_during_cleanup_still_closes_the_sink():
    """A second cancel while workers clean up still closes the sink with "interrupted"."""
    sink = RecordingSink()

    async def main() -> None:
        started, cleaning, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def work(i: int) -> int:
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cleaning.set()
                await release.wait()  # a slow cleanup, like a cache flush
                raise
            return i

        task = asyncio.ensure_future(run_batched_callable(list(range(4)), work, num_workers=2, progress=sink))
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        await asyncio.wait_for(cleaning.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()

    asyncio.run(main())
    assert sink.closes == ["interrupted"]


def test_concurrent_batches_on_one_backend_count_apart(tmp_path):
    """Two batches running at once on one backend each report only their own rows and requests."""
    sink_a, sink_b = RecordingSink(), RecordingSink()
    with MockServer(latency_s=0.005) as server:
        config = make_config(server, tmp_path, batch={"num_workers": 3})

        async def body(backend):
            return await asyncio.gather(
                backend.run_batched([ask(f"a{i}") for i in range(5)], progress=sink_a),
                backend.run_batched([ask(f"b{i}") for i in range(9)], progress=sink_b),
            )

        with_backend(config, body)
    assert (sink_a.final.total, sink_a.final.done, sink_a.final.sent) == (5, 5, 5)
    assert (sink_b.final.total, sink_b.final.done, sink_b.final.sent) == (9, 9, 9)


def test_text_progress_prints_a_done_summary(srv, tmp_path, capsys):
    """progress="text" prints a final "done N/N" line on standard error."""
    config = make_config(srv, tmp_path, batch={"heartbeat_s": 0.05})
    with_backend(config, lambda b: b.run_batched([ask(f"t{i}") for i in range(7)], progress="text"))
    assert "done 7/7" in capsys.readouterr().err


# -- backend.run_batched -------------------------------------------------------------------------


def test_identical_requests_are_sent_once(srv, tmp_path):
    """Identical requests in one batch reach the server once; every slot gets it under its own id."""
    requests = [ask("same", "a"), ask("same", "b"), ask("other", "c"), ask("same", "d")]
    out = with_backend(make_config(srv, tmp_path), lambda b: b.run_batched(requests, progress=False))
    assert srv.requests_for("same") == 1
    assert [r.request_id for r in out] == ["a", "b", "c", "d"]
    assert [r.text for r in out] == [expected("same")] * 2 + [expected("other"), expected("same")]


def test_fully_cached_rerun_sends_nothing(srv, tmp_path):
    """Running a batch again answers every row from the cache with zero requests."""
    requests = [ask(f"q{i}") for i in range(12)]

    async def body(backend):
        first = await backend.run_batched(requests, progress=False)
        srv.reset_counts()
        return first, await backend.run_batched(requests, progress=False)

    first, second = with_backend(make_config(srv, tmp_path), body)
    assert srv.requests_total == 0
    assert all(r.cached for r in second)
    assert [r.text for r in second] == [r.text for r in first]


def test_mixed_cached_fresh_and_failed_rows_stay_in_order(srv, tmp_path):
    """Cached, fresh and failed rows each land in their own slot, in input order."""
    srv.script("m2", ["400"])
    srv.script("m5", ["400"])
    prompts = [f"m{i}" for i in range(7)]

    async def body(backend):
        await backend.run_batched([ask("m0"), ask("m3")], progress=False)
        return await backend.run_batched([ask(p) for p in prompts], progress=False)

    out = with_backend(make_config(srv, tmp_path), body)
    assert [r.request_id for r in out] == prompts
    kinds = ["cached" if r.cached else type(r).__name__ for r in out]
    assert kinds == ["cached", "MinimaLlmResponse", "MinimaLlmFailure", "cached",
                     "MinimaLlmResponse", "MinimaLlmFailure", "MinimaLlmResponse"]
    assert [r.text for i, r in enumerate(out) if i not in (2, 5)] == [expected(p) for p in ("m0", "m1", "m3", "m4", "m6")]


def test_batch_aborted_keeps_cached_rows_and_commits_answers(srv, tmp_path):
    """BatchAborted from run_batched has one slot per request, cache hits included, answers saved."""
    srv.script("f1", ["400"])
    srv.script("f3", ["400"])
    prompts = ["c0", "f1", "ok2", "f3", "ok4", "c5", "ok6"]
    config = make_config(srv, tmp_path, batch={"num_workers": 1, "max_failures": 1})

    async def body(backend):
        await backend.run_batched([ask("c0"), ask("c5")], progress=False)
        with pytest.raises(BatchAborted) as info:
            await backend.run_batched([ask(p) for p in prompts], progress=False)
        return info.value.results

    results = with_backend(config, body)
    assert len(results) == 7
    assert results[0].cached and results[5].cached
    assert [type(results[i]).__name__ for i in (1, 2, 3)] == ["MinimaLlmFailure", "MinimaLlmResponse", "MinimaLlmFailure"]
    assert results[4] is None and results[6] is None
    assert sorted(cached_prompts(tmp_path)) == ["c0", "c5", "ok2"]


def test_cancelled_batch_commits_every_finished_answer(tmp_path):
    """After a cancel, the cache holds exactly the rows that finished, all of them answered."""
    sink = RecordingSink()
    with MockServer(latency_s=0.01) as server:
        config = make_config(server, tmp_path, max_outstanding=8, batch={"num_workers": 8})

        async def body(backend):
            task = asyncio.ensure_future(backend.run_batched([ask(f"k{i}") for i in range(400)], progress=sink))
            await wait_until(lambda: server.requests_total >= 40)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        with_backend(config, body)
        answered = {f"k{i}" for i in range(400) if server.requests_for(f"k{i}")}
        requests_total = server.requests_total
    stored = cached_prompts(tmp_path)
    assert sink.closes == ["interrupted"]
    assert len(stored) == sink.final.done > 0
    assert set(stored) <= answered
    assert requests_total - len(stored) <= 8  # only the requests in flight at the cancel are lost


def test_results_hold_no_raw_body_by_default(srv, tmp_path):
    """Fresh and cached results carry raw=None unless include_raw=True."""
    requests = [ask(f"r{i}") for i in range(3)]

    async def body(backend):
        return (await backend.run_batched(requests, progress=False),
                await backend.run_batched(requests, progress=False))

    fresh, cached = with_backend(make_config(srv, tmp_path), body)
    assert all(r.raw is None for r in fresh + cached)
    assert all(r.cached for r in cached)


def test_include_raw_returns_the_body_for_fresh_and_cached(srv, tmp_path):
    """include_raw=True gives the server's JSON body, also on cache hits."""
    requests = [ask(f"w{i}") for i in range(3)]

    async def body(backend):
        return (await backend.run_batched(requests, include_raw=True, progress=False),
                await backend.run_batched(requests, include_raw=True, progress=False))

    fresh, cached = with_backend(make_config(srv, tmp_path), body)
    for result in fresh + cached:
        assert isinstance(result.raw, dict)
        assert result.raw["choices"][0]["message"]["content"] == result.text
    assert all(r.cached for r in cached)


def test_results_are_responses_with_expected_texts(srv, tmp_path):
    """A clean batch returns one MinimaLlmResponse per request with the server's answer."""
    requests = [ask(f"x{i}") for i in range(20)]
    out = with_backend(make_config(srv, tmp_path), lambda b: b.run_batched(requests, progress=False))
    assert all(isinstance(r, MinimaLlmResponse) for r in out)
    assert [r.text for r in out] == [expected(f"x{i}") for i in range(20)]


def test_connect_failures_after_answers_count_against_the_budget(srv, tmp_path):
    """Once the server has answered in this batch, a row that cannot connect is a row failure, not an abort."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    live = OpenAIMinimaLlm(make_config(srv, tmp_path / "live", max_attempts=1))
    dead = OpenAIMinimaLlm(make_config(srv, tmp_path / "dead", max_attempts=1).replace(base_url=dead_url))

    async def answer(prompt):
        return await (live if prompt == "alive" else dead).generate(ask(prompt))

    async def body():
        try:
            return await run_batched_callable(["alive", "gone"], answer, num_workers=1, progress=False)
        finally:
            await live.aclose()
            await dead.aclose()

    results = asyncio.run(body())
    assert results[0].text == expected("alive")
    assert isinstance(results[1], MinimaLlmFailure) and results[1].error_type == "ConnectError"


def test_connect_failure_before_any_answer_aborts_at_once(tmp_path):
    """A batch whose server never answered stops at the first row that cannot connect."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    config = MinimaLlmConfig(base_url=dead_url, model="mock-model", rpm=0, max_attempts=1,
                             batch={"num_workers": 2, "max_failures": 25})
    with pytest.raises(BatchAborted, match="has not answered a single request") as info:
        with_backend(config, lambda b: b.run_batched([ask(f"q{i}") for i in range(40)], progress=False))
    assert sum(r is not None for r in info.value.results) <= 2  # one per worker at most


# -- a large batch and the cyclic garbage collector ------------------------------------------


class _Cycle:
    """An object in a reference cycle with itself: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_large_batch_collects_young_cycles_and_turns_the_collector_back_on():
    """During a batch of YOUNG_ONLY_FROM_ROWS rows or more the automatic collector is off (no
    full walks over the rows), yet a cycle made during the batch is freed within a tick; after
    the batch the collector is on again."""
    import gc
    import weakref

    from minima_nb.engine.heap import YOUNG_ONLY_FROM_ROWS
    from minima_nb.engine.pool import SNAPSHOT_INTERVAL_S

    assert gc.isenabled()
    enabled_during: list[bool] = []
    freed_by_the_ticker: list[bool] = []

    async def one(i: int) -> int:
        if i == 0:
            enabled_during.append(gc.isenabled())
            young = weakref.ref(_Cycle())  # garbage at once, but only a collection frees it
            for _ in range(20):
                await asyncio.sleep(SNAPSHOT_INTERVAL_S / 2)
                if young() is None:
                    break
            freed_by_the_ticker.append(young() is None)
        return i

    rows = list(range(YOUNG_ONLY_FROM_ROWS))
    out = asyncio.run(run_batched_callable(rows, one, progress=False))
    assert out == rows
    assert enabled_during == [False]
    assert freed_by_the_ticker == [True]
    assert gc.isenabled()


def test_small_batch_and_a_callers_own_gc_setting_are_left_alone():
    """A small batch leaves the collector on; a process that turned it off keeps it off."""
    import gc

    async def enabled(_: int) -> bool:
        return gc.isenabled()

    assert set(asyncio.run(run_batched_callable(list(range(100)), enabled, progress=False))) == {True}
    gc.disable()
    try:
        asyncio.run(run_batched_callable(list(range(20_000)), enabled, progress=False))
        assert not gc.isenabled()
    finally:
        gc.enable()
