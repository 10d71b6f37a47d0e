"""minima_nb's private event loop: one per process, in a daemon thread, and its lifecycle.

Users call minima_nb from plain scripts and from Jupyter cells. In a cell an event loop is
already running in the calling thread, so ``asyncio.run`` fails there; patching the kernel's
loop with nest_asyncio is not an option either (archived, and with ipykernel 7 it can stall the
next queued cells). So this module owns **one process-wide private loop** running in a daemon
thread named ``minima-nb-loop``; :mod:`.sync` runs work on it (``run_sync``).

Cross-loop rule: async code called through ``run_sync`` runs on the private loop, so every
loop-bound object it creates (HTTP sessions, semaphores, the rate limiter) lives on that loop and
must only be used there. Because the same loop serves every call, those objects (and the HTTP
connection pools) are reused from one ``run_sync`` to the next.

Which loop: uvloop's when it is installed (the ``fast`` extra), because the engine's own work per
request is mostly the loop's (callbacks, sockets, timers) and uvloop does that work in C; asyncio's
otherwise, or when ``MINIMA_UVLOOP=0`` is set (read each time a loop is made). The choice only
concerns this private thread: a Jupyter kernel's loop in the caller's thread is never touched.

Lifecycle: the loop starts on first use and is replaced when it stopped or belongs to the parent
of a forked process (the child makes its own); ``shutdown_background_loop`` (also run at
interpreter exit) cancels what is left, waits a bounded time for its cleanup and closes the loop.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time
from typing import Any, Protocol

logger = logging.getLogger(__name__)

LOOP_THREAD_NAME = "minima-nb-loop"
UVLOOP_ENV = "MINIMA_UVLOOP"
_OFF_WORDS = frozenset({"0", "false", "no", "off"})
_START_TIMEOUT_S = 10.0
_EXIT_SHUTDOWN_TIMEOUT_S = 2.0

_lock = threading.Lock()
_owner: LoopThread | None = None
_thread_flags = threading.local()
# Loops inherited from a parent process: kept referenced so they are never garbage-collected
# (and "closed") in the child, where their thread does not exist.
_inherited_from_parent: list[LoopThread] = []


class TrackedCall(Protocol):
    """What the loop needs of a call in flight on it, to fail it if the loop shuts down first."""

    task: asyncio.Task[Any] | None
    coro: Any

    def fail(self, exc: BaseException) -> None: ...


def uvloop_wanted() -> bool:
    """False when ``MINIMA_UVLOOP`` says off (``0``, ``false``, ``no``, ``off``); True otherwise."""
    return os.environ.get(UVLOOP_ENV, "").strip().lower() not in _OFF_WORDS


def new_private_loop() -> tuple[asyncio.AbstractEventLoop, str]:
    """A new event loop for the private thread and its kind: ``"uvloop"`` or ``"asyncio"``.

    uvloop's when it is importable and not switched off with ``MINIMA_UVLOOP=0``; asyncio's
    otherwise (uvloop missing is the ordinary case, not an error).
    """
    if uvloop_wanted():
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


class LoopThread:
    """One private loop, the daemon thread running it, and the calls in flight on it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop, self.kind = new_private_loop()
        self.stop_requested = threading.Event()
        self.shutdown_timeout = _EXIT_SHUTDOWN_TIMEOUT_S
        self._jobs: set[TrackedCall] = set()
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

    def track(self, job: TrackedCall) -> None:
        with self._jobs_lock:
            self._jobs.add(job)

    def forget(self, job: TrackedCall) -> None:
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


def background_loop() -> asyncio.AbstractEventLoop:
    """The process-wide private event loop, started on first use in a daemon thread.

    A new loop replaces one that stopped, was shut down, or belongs to the parent of a forked
    process.
    """
    return current_owner().loop


def background_loop_kind() -> str:
    """The private loop's kind, ``"uvloop"`` or ``"asyncio"`` (starting the loop if needed)."""
    return current_owner().kind


def current_owner() -> LoopThread:
    """The usable loop of this process, started (or replaced) first when needed."""
    global _owner
    with _lock:
        owner = _owner
        if owner is None or not owner.usable():
            owner = LoopThread()
            owner.start()
            _owner = owner
        return owner


def in_background_loop() -> bool:
    """True when called from the private loop's thread (where ``run_sync`` must not be used)."""
    return getattr(_thread_flags, "is_loop_thread", False)


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
