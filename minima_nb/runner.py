"""The sync bridge: one private event loop in a daemon thread, and ``run_sync`` to use it.

Users call minima_nb from plain scripts and from Jupyter cells. In a cell an event loop is
already running in the calling thread, so ``asyncio.run`` fails there; patching the kernel's
loop with nest_asyncio is not an option either (archived, and with ipykernel 7 it can stall the
next queued cells). So this module owns **one process-wide private loop** running in a daemon
thread named ``minima-nb-loop``, and :func:`run_sync` always runs the work on it, from scripts
and kernels alike. From the caller's side it behaves like ``asyncio.run``: it blocks, then
returns the result or raises the exception.

Cross-loop rule: async code called through ``run_sync`` runs on the private loop, so every
loop-bound object it creates (HTTP sessions, semaphores, the rate limiter) lives on that loop and
must only be used there. Because the same loop serves every call, those objects (and the HTTP
connection pools) are reused from one ``run_sync`` to the next.

Behaviours relied on: the caller waits in ``concurrent.futures.wait(..., timeout=0.1)`` polls
(Ctrl-C is seen promptly; ``on_poll``, a progress sink's draw, runs in the caller's thread);
``KeyboardInterrupt`` while waiting cancels the work, waits a bounded time for its ``finally``
blocks (cache flushes), then re-raises; ``run_sync`` from the loop's own thread raises instead
of deadlocking; a kernel patched by ``nest_asyncio`` works (this module never applies it);
after a ``fork`` the child makes its own loop.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import inspect
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)

LOOP_THREAD_NAME = "minima-nb-loop"
_POLL_INTERVAL_S = 0.1
_START_TIMEOUT_S = 10.0
_EXIT_SHUTDOWN_TIMEOUT_S = 2.0
_REENTRY_MESSAGE = (
    "run_sync() was called from inside minima_nb's event loop; use `await` there instead"
)

_lock = threading.Lock()
_owner: _LoopThread | None = None
_thread_flags = threading.local()
# Loops inherited from a parent process: kept referenced so they are never garbage-collected
# (and "closed") in the child, where their thread does not exist.
_inherited_from_parent: list[_LoopThread] = []


class _LoopThread:
    """One private loop, the daemon thread running it, and the calls in flight on it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.stop_requested = threading.Event()
        self.shutdown_timeout = _EXIT_SHUTDOWN_TIMEOUT_S
        self._jobs: set[_Job] = set()
        self._jobs_lock = threading.Lock()
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._serve, name=LOOP_THREAD_NAME, daemon=True)

    def start(self) -> None:
        """Start the thread and return once the loop is running."""
        self.thread.start()
        if not self._started.wait(_START_TIMEOUT_S):
            raise RuntimeError("minima_nb's background event loop did not start")

    def usable(self) -> bool:
        """True while this loop can take new work in this process."""
        return (
            self.pid == os.getpid()
            and self.thread.is_alive()
            and not self.stop_requested.is_set()
            and not self.loop.is_closed()
        )

    def request_stop(self, timeout: float) -> None:
        """Ask the thread to cancel what is left, close the loop and exit (returns at once)."""
        self.shutdown_timeout = timeout
        self.stop_requested.set()
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # already closed: the thread is exiting or gone
            pass

    def track(self, job: _Job) -> None:
        with self._jobs_lock:
            self._jobs.add(job)

    def forget(self, job: _Job) -> None:
        with self._jobs_lock:
            self._jobs.discard(job)

    def _serve(self) -> None:
        _thread_flags.is_loop_thread = True
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self._run_until_stop_requested()
        finally:
            self._close()

    def _run_until_stop_requested(self) -> None:
        while not self.stop_requested.is_set() and not self.loop.is_closed():
            try:
                self.loop.run_forever()
            except BaseException:
                # A task raised SystemExit/KeyboardInterrupt, which asyncio lets escape the loop.
                # The task already holds that exception and its caller will get it; keep serving
                # the other calls instead of letting the loop thread die.
                logger.debug("minima_nb event loop: a task raised through the loop", exc_info=True)
            # run_forever also returns when user code calls loop.stop(); only our flag ends it.

    def _close(self) -> None:
        loop = self.loop
        deadline = time.monotonic() + max(0.0, self.shutdown_timeout)
        try:
            if not loop.is_closed():
                _cancel_leftover_tasks(loop, deadline)
                _finish_loop_services(loop, deadline)
        except BaseException:
            logger.debug("minima_nb event loop: error while shutting down", exc_info=True)
        finally:
            if not loop.is_closed():
                loop.close()
            self._fail_unfinished_jobs()

    def _fail_unfinished_jobs(self) -> None:
        with self._jobs_lock:
            jobs, self._jobs = list(self._jobs), set()
        for job in jobs:
            if job.task is None:
                job.coro.close()
            job.fail(RuntimeError("minima_nb's event loop was shut down before this call finished"))


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _cancel_leftover_tasks(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    # A few passes: a cancelled task's cleanup may start new tasks. Bounded in count and time.
    for _ in range(3):
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        if not pending:
            return
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.wait(pending, timeout=_remaining(deadline)))
        for task in pending:
            if task.done() and not task.cancelled():
                task.exception()  # mark retrieved: nobody else will look at it now
    still = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if still:
        logger.warning("minima_nb event loop closed with %d task(s) still running", len(still))


def _finish_loop_services(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    loop.run_until_complete(loop.shutdown_asyncgens())
    try:
        loop.run_until_complete(
            asyncio.wait_for(loop.shutdown_default_executor(), _remaining(deadline))
        )
    except asyncio.TimeoutError:
        logger.warning("minima_nb event loop: executor threads still busy at shutdown")


class _Job:
    """One ``run_sync`` call: the coroutine, its Task on the private loop, and its outcome.

    ``outcome`` is only settled when the Task has really finished (cleanup included), which
    is what lets an interrupted caller wait for the ``finally`` blocks before re-raising.
    """

    def __init__(self, coro: Coroutine[Any, Any, Any], owner: _LoopThread) -> None:
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
            self.owner = _current_owner()

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


def background_loop() -> asyncio.AbstractEventLoop:
    """The process-wide private event loop, started on first use in a daemon thread.

    A new loop replaces one that stopped, was shut down, or belongs to the parent of a forked
    process.
    """
    return _current_owner().loop


def _current_owner() -> _LoopThread:
    global _owner
    with _lock:
        owner = _owner
        if owner is None or not owner.usable():
            owner = _LoopThread()
            owner.start()
            _owner = owner
        return owner


def in_background_loop() -> bool:
    """True when called from the private loop's thread (where ``run_sync`` must not be used)."""
    return getattr(_thread_flags, "is_loop_thread", False)


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


def _owner_or_close(coro: Coroutine[Any, Any, Any]) -> _LoopThread:
    try:
        return _current_owner()
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


def shutdown_background_loop(timeout: float = 5.0) -> None:
    """Cancel what still runs on the private loop, close it and join its thread.

    Waits up to ``timeout`` seconds. Safe to call twice, or when no loop was started; the next
    ``run_sync`` starts a new loop. Called at interpreter exit.
    """
    global _owner
    with _lock:
        owner, _owner = _owner, None
    if owner is None or owner.pid != os.getpid():
        return
    owner.request_stop(timeout)
    if owner.thread is threading.current_thread():
        return  # cannot join ourselves; the thread closes the loop once this callback returns
    owner.thread.join(timeout)
    if owner.thread.is_alive():
        logger.warning("minima_nb event loop thread did not stop within %.1f s", timeout)


def _after_fork_in_child() -> None:
    # The parent's loop thread does not exist here, and the lock may have been held by a
    # thread that no longer exists either: start from a clean slate.
    global _lock, _owner
    _lock = threading.Lock()
    if _owner is not None:
        _inherited_from_parent.append(_owner)
    _owner = None
    _thread_flags.is_loop_thread = False


def _shutdown_at_exit() -> None:
    shutdown_background_loop(_EXIT_SHUTDOWN_TIMEOUT_S)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_shutdown_at_exit)
