"""The sync bridge: ``run_sync(coro)`` runs async work on the private loop and blocks for it.

From the caller's side it behaves like ``asyncio.run``: it blocks, then returns the result or
raises the exception, with or without an event loop running in the calling thread (a Jupyter
cell). The loop itself is :mod:`.loop`'s.

Behaviours relied on: the caller waits in ``concurrent.futures.wait(..., timeout=0.1)`` polls
(Ctrl-C is seen promptly; ``on_poll``, a progress sink's draw, runs in the caller's thread);
``KeyboardInterrupt`` while waiting cancels the work, waits a bounded time for its ``finally``
blocks (cache flushes), then re-raises; ``run_sync`` from the loop's own thread raises instead
of deadlocking; a kernel patched by ``nest_asyncio`` works (this module never applies it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from .loop import LoopThread, current_owner, in_background_loop

T = TypeVar("T")

logger = logging.getLogger(__name__)

_POLL_INTERVAL_S = 0.1
_REENTRY_MESSAGE = (
    "run_sync() was called from inside minima_nb's event loop; use `await` there instead"
)


class _Job:
    """One ``run_sync`` call: the coroutine, its Task on the private loop, and its outcome.

    ``outcome`` is only settled when the Task has really finished (cleanup included), which
    is what lets an interrupted caller wait for the ``finally`` blocks before re-raising.
    """

    def __init__(self, coro: Coroutine[Any, Any, Any], owner: LoopThread) -> None:
        self.coro = coro
        self.owner = owner
        self.task: asyncio.Task[Any] | None = None
        self.cancel_requested = False
        self.outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def submit(self) -> None:
        """Queue the start on the loop (from the caller's thread).

        If a concurrent ``shutdown_background_loop()`` closed the loop first (nothing was
        queued then), retry once on a fresh loop; if that fails too, close the coroutine.
        """
        for attempt in (1, 2):
            self.owner.track(self)
            try:
                self.owner.loop.call_soon_threadsafe(self._start)
                return
            except RuntimeError as exc:
                self.owner.forget(self)
                if attempt == 2:
                    self.coro.close()
                    self.fail(exc)
                    raise
            self.owner = current_owner()

    def request_cancel(self) -> bool:
        """Cancel the Task (from the caller's thread); False if the loop is already closed."""
        try:
            self.owner.loop.call_soon_threadsafe(self._cancel)
        except RuntimeError:
            return False
        return True

    def fail(self, exc: BaseException) -> None:
        try:
            self.outcome.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            pass

    def _start(self) -> None:
        if self.cancel_requested:
            self._abandon()
            return
        try:
            self.task = self.owner.loop.create_task(self.coro)
        except BaseException as exc:
            self.coro.close()
            self.owner.forget(self)
            self.fail(exc)
            return
        self.task.add_done_callback(self._finish)

    def _cancel(self) -> None:
        self.cancel_requested = True
        if self.task is not None:
            self.task.cancel()
        elif not self.outcome.done():
            # Never queued (the interrupt came before submit): the loop's FIFO order means a
            # queued start would have run before this, so the coroutine is ours to close.
            self._abandon()

    def _abandon(self) -> None:
        self.coro.close()
        self.owner.forget(self)
        self.fail(asyncio.CancelledError())

    def _finish(self, task: asyncio.Task[Any]) -> None:
        self.owner.forget(self)
        try:
            value = task.result()
        except BaseException as exc:
            self.fail(exc)
        else:
            self.outcome.set_result(value)


def run_sync(
    awaitable: Awaitable[T],
    *,
    on_poll: Callable[[], None] | None = None,
    cancel_timeout_s: float = 2.0,
) -> T:
    """Run a coroutine or awaitable on the private loop and block until it is done.

    Returns its result or re-raises its exception. Works with or without an event loop running
    in the calling thread (a Jupyter cell blocks until the work is done). ``on_poll()`` is
    called in the calling thread about every 0.1 s and once at the end; if it raises, it is
    logged at debug level and not called again. On ``KeyboardInterrupt`` (any
    ``BaseException``) while waiting, the work is cancelled, given up to ``cancel_timeout_s``
    to run its cleanup, and the exception is re-raised.

    Raises ``RuntimeError`` when called from the private loop's own thread (use ``await``).
    """
    if in_background_loop():
        _close_if_coroutine(awaitable)
        raise RuntimeError(_REENTRY_MESSAGE)
    coro = _as_coroutine(awaitable)
    job = _Job(coro, _owner_or_close(coro))
    try:
        # An interrupt can land inside submit() after the start was queued (the Task may
        # already run), so from here on only the loop thread may touch the coroutine: the
        # cancel path below goes through the loop, in order after the start.
        job.submit()
        _wait_polling(job, on_poll)
    except BaseException:
        _cancel_and_wait(job, cancel_timeout_s)
        raise
    return job.outcome.result()


def _as_coroutine(awaitable: Awaitable[T]) -> Coroutine[Any, Any, T]:
    if asyncio.iscoroutine(awaitable):
        return awaitable
    if inspect.isawaitable(awaitable):
        return _await_it(awaitable)
    raise TypeError(f"run_sync() needs a coroutine or an awaitable, got {type(awaitable).__name__}")


async def _await_it(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _close_if_coroutine(obj: object) -> None:
    # Closing an unstarted coroutine avoids the "coroutine ... was never awaited" warning.
    if asyncio.iscoroutine(obj):
        obj.close()


def _owner_or_close(coro: Coroutine[Any, Any, Any]) -> LoopThread:
    try:
        return current_owner()
    except BaseException:
        coro.close()  # nothing was queued yet: avoid the "never awaited" warning
        raise


def _wait_polling(job: _Job, on_poll: Callable[[], None] | None) -> None:
    # wait(timeout=...) returns instead of raising, so a TimeoutError raised by the work itself
    # can never be mistaken for "not finished yet" (they are the same class on 3.11+).
    while True:
        finished, _ = concurrent.futures.wait((job.outcome,), timeout=_POLL_INTERVAL_S)
        on_poll = _call_on_poll(on_poll)
        if finished:
            return
        if not job.owner.thread.is_alive() and not job.outcome.done():
            raise RuntimeError("minima_nb's event loop thread stopped before the call finished")


def _call_on_poll(on_poll: Callable[[], None] | None) -> Callable[[], None] | None:
    if on_poll is None:
        return None
    try:
        on_poll()
    except Exception:
        # A broken progress display must not kill the run: log once, then stop calling it.
        logger.debug("run_sync: on_poll raised; not calling it again", exc_info=True)
        return None
    return on_poll


def _cancel_and_wait(job: _Job, timeout: float) -> None:
    if job.outcome.done() or not job.request_cancel():
        return
    finished, _ = concurrent.futures.wait((job.outcome,), timeout=max(0.0, timeout))
    if not finished:
        logger.warning(
            "minima_nb: interrupted work still cleaning up after %.1f s; "
            "leaving it to finish on the background loop",
            timeout,
        )
