"""The batch worker pool: ``run_batched_callable(items, async_fn)``.

Guarantees, each kept by a test:

* results come back in input order, one per input (``None`` results included); a failed row is
  a :class:`MinimaLlmFailure` value in its slot, never an exception that loses the other rows;
* when failed rows exceed ``max_failures`` (minima-llm's meaning: ``None`` never stops, ``0``
  stops at the first failure), or at the first failure every row would share (401, 403,
  exhausted quota, or a connection failure before the server has answered anything), the pool
  stops taking work and raises :class:`BatchAborted` carrying every
  result gathered so far (rows that never ran are ``None``); its message lists the last
  ``keep_failure_summaries`` failures, and the first ``print_first_failures`` are printed to
  stderr as they happen (unless progress is off);
* a programming error in ``async_fn`` (TypeError, NameError...) cancels every worker and is
  re-raised; cancellation (KeyboardInterrupt through the sync bridge, ``task.cancel()``) cancels
  the workers and re-raises; no task is left running either way;
* progress is published as :class:`BatchSnapshot` events to a sink at most every
  ``SNAPSHOT_INTERVAL_S`` plus a final one; counting stays on the loop thread;
* a large batch runs with the cyclic collector's young collections only (:mod:`.heap`): the
  full collections' walks over millions of live rows wait until it is over.

The pool knows nothing of HTTP or caches: the backend's ``run_batched`` builds on it.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from ..config import BatchConfig
from ..errors import BatchAborted, BudgetExceeded
from ..types import MinimaLlmFailure
from .budget import current_cap
from .heap import collect_young, young_collections_only
from .meter import BatchMeter, current_meter
from .progress import ProgressSink, make_sink

T = TypeVar("T")
R = TypeVar("R")
ProgressArg = bool | str | ProgressSink | None

SNAPSHOT_INTERVAL_S = 0.2
# Failures every row would share: retrying other rows only spends the budget slowly.
FATAL_ERROR_TYPES = frozenset({"AuthError"})
_NOT_RUN: Any = object()


class _Default:
    """Type of :data:`_DEFAULT`: "not given", where ``None`` is a meaningful value."""


_DEFAULT = _Default()


def default_fatal(result: Any) -> str | None:
    """The abort message when ``result`` is a failure every other row would hit too."""
    if isinstance(result, MinimaLlmFailure) and result.error_type in FATAL_ERROR_TYPES:
        return f"stopped at the first {result.error_type} (every row would fail the same way): {result.message}"
    return None


class _Pool(Generic[T, R]):
    """State of one running batch; lives only for the duration of one call."""

    def __init__(
        self,
        items: Sequence[T],
        async_fn: Callable[[T], Awaitable[R]],
        *,
        max_failures: int | None,
        weights: Sequence[int] | None,
        fatal: Callable[[Any], str | None] | None,
        meter: BatchMeter,
        print_first: int = 0,
        keep_last: int = 20,
    ) -> None:
        self.items = items
        self.async_fn = async_fn
        self.max_failures = max_failures
        self.print_first = print_first
        self.recent: deque[str] = deque(maxlen=keep_last)  # 0 keeps none, as in minima-llm
        self.weights = weights
        self.fatal = fatal
        self.meter = meter
        self.results: list[Any] = [_NOT_RUN] * len(items)
        self.next_index = 0
        self.failures = 0
        self.finished = 0
        self.abort_reason: str | None = None
        self.abort_type: type[BatchAborted] = BatchAborted
        self.cap = current_cap.get()  # a spend cap set around this batch (generate(max_cost=))
        self.billed = 0  # items answered by the server (not the cache, not failed): the cap's mean

    async def worker(self) -> None:
        current_meter.set(self.meter)  # this task's own context copy
        while self.abort_reason is None and self.next_index < len(self.items):
            if self.cap is not None:
                refusal = self.cap.refusal(self.meter, self.next_index - self.finished, self.billed)
                if refusal is not None:
                    self.abort_reason, self.abort_type = refusal, BudgetExceeded
                    break
            index = self.next_index
            self.next_index += 1
            result = await self.async_fn(self.items[index])
            self.results[index] = result
            self._count(index, result)

    def _count(self, index: int, result: Any) -> None:
        self.finished += 1
        rows = self.weights[index] if self.weights is not None else 1
        failed = isinstance(result, MinimaLlmFailure)
        cached = bool(getattr(result, "cached", False))
        self.billed += not (cached or failed)
        for _ in range(rows):
            self.meter.row_finished(cached=cached, failed=failed, error=result.message if failed else None)
        self.meter.preview(str(getattr(result, "request_id", index)), getattr(result, "text", None),
                           f"{result.error_type}: {result.message}" if failed else None)
        if not failed:
            return
        self.failures += 1
        summary = f"{result.request_id}: {result.error_type}: {result.message}"
        self.recent.append(summary)
        if self.failures <= self.print_first:
            print(f"minima: failure {self.failures}: {summary}", file=sys.stderr)
        reason = self.fatal(result) if self.fatal else None
        if reason is None and result.error_type == "ConnectError" and self.meter.received == 0:
            # Not one HTTP answer yet: a wrong base_url or a server that is down. Every row
            # would spend its retries the same way, so say so now rather than after the budget.
            reason = (
                "stopped: the server has not answered a single request of this batch, so every row "
                f"would fail the same way: {result.error_type}: {result.message}"
            )
        if reason is None and self.max_failures is not None and self.failures > self.max_failures:
            recent = "".join(f"\n  - {line}" for line in self.recent)
            reason = (
                f"stopped after {self.failures} failed requests, more than batch.max_failures="
                f"{self.max_failures} (BATCH_MAX_FAILURES; 'none' never stops); last error: "
                f"{result.error_type}: {result.message}" + (f"\nRecent failures:{recent}" if recent else "")
            )
        if reason is not None and self.abort_reason is None:
            self.abort_reason = reason

    def finished_results(self) -> list[Any]:
        return [None if r is _NOT_RUN else r for r in self.results]


async def run_batched_callable(
    items: Sequence[T],
    async_fn: Callable[[T], Awaitable[R]],
    batch_config: BatchConfig | None = None,
    pulse_provider: Callable[[], Any] | None = None,
    *,
    num_workers: int | None = None,
    max_failures: int | None | _Default = _DEFAULT,
    progress: ProgressArg = True,
    label: str = "minima",
    total: int | None = None,
    cached_rows: int = 0,
    weights: Sequence[int] | None = None,
    fatal: Callable[[Any], str | None] | None = default_fatal,
    draw_in_loop: bool = True,
) -> list[R]:
    """Run ``async_fn`` over ``items`` with a pool of workers; return results in input order.

    ``total``/``cached_rows``/``weights`` let a caller that answered some rows itself (from the
    cache, or by sharing one answer among identical rows) show progress in rows: ``weights[i]``
    is how many rows item ``i`` stands for. ``draw_in_loop=False`` leaves ``sink.draw()`` to the
    caller's thread (the sync bridge does that in notebooks). ``max_failures`` overrides the
    config's (``None``: never stop). ``pulse_provider`` is accepted for minima-llm's signature;
    the progress display counts the pool's own rows instead.
    """
    del pulse_provider
    cfg = batch_config or BatchConfig()
    workers = max(1, min(num_workers or cfg.num_workers, len(items)))
    meter = BatchMeter(total if total is not None else len(items))
    meter.rows_finished_from_cache(cached_rows)
    sink = make_sink(progress, label=label, heartbeat_s=cfg.heartbeat_s, stall_s=cfg.stall_s)
    pool = _Pool(
        items, async_fn,
        max_failures=cfg.max_failures if isinstance(max_failures, _Default) else max_failures,
        weights=weights, fatal=fatal, meter=meter,
        print_first=cfg.print_first_failures if progress not in (False, None) else 0,
        keep_last=cfg.keep_failure_summaries,
    )
    status = "error"
    with young_collections_only(len(items)) as collecting:
        ticker = asyncio.ensure_future(_publish(sink, meter, draw_in_loop, collecting))
        tasks = [asyncio.ensure_future(pool.worker()) for _ in range(workers if items else 0)]
        try:
            if tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    exc = task.exception()
                    if exc is not None:
                        raise exc
            status = "aborted" if pool.abort_reason else "done"
        except asyncio.CancelledError:
            status = "interrupted"
            raise
        finally:
            try:
                await _cancel_all([*tasks, ticker])
            finally:  # a second cancel can cut the wait short; the display must still end
                sink.update(meter.snapshot())
                sink.close(status)
    if pool.abort_reason is not None:
        raise pool.abort_type(pool.abort_reason, pool.finished_results())
    return pool.finished_results()


async def _publish(sink: ProgressSink, meter: BatchMeter, draw: bool, collect: bool) -> None:
    """Every tick: a snapshot to the sink (drawn here when asked), the young garbage collected
    when the batch turned automatic collection off."""
    while True:
        sink.update(meter.snapshot())
        if draw:
            sink.draw()
        if collect:
            collect_young()
        await asyncio.sleep(SNAPSHOT_INTERVAL_S)


async def _cancel_all(tasks: list[asyncio.Future[Any]]) -> None:
    """Cancel and await every task, so none is left running whatever happened."""
    for task in tasks:
        task.cancel()
    # Shielded so a second cancel of the caller cannot leave these half-cancelled.
    await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))
