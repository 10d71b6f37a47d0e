"""One batch of requests run for an accessor call, and its progress display on the caller's side.

:func:`run_batch` runs ``backend.run_batched`` from sync code on minima_nb's private loop and
draws the display on the calling thread (so a notebook bar lands in the cell that made the
call); :func:`arun_batch` awaits it on the caller's loop. :class:`CloseOnCaller` keeps the
display's ``close()`` for the caller and makes its final line a measurement of the whole call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any

from ..engine.progress import make_sink
from ..errors import BatchAborted
from ..types import BatchSnapshot, MinimaLlmRequest

__all__ = ["CloseOnCaller", "arun_batch", "run_batch", "sink_for"]


class CloseOnCaller:
    """Passes snapshots through, but keeps ``close()`` for the caller's thread.

    The batch closes its sink on the loop thread; a notebook bar created or finished there
    could be shown in another cell, so the status is recorded and :meth:`finish` closes the
    real sink from the thread that waits for the batch.
    """

    def __init__(self, sink: Any, started: float | None = None) -> None:
        self.sink = sink
        self.status: str | None = None
        self.updated = False
        self.started = started  # when the call began (before its cache lookup), if known
        self.last: BatchSnapshot | None = None

    def update(self, snapshot: BatchSnapshot) -> None:
        self.updated = True
        self.last = snapshot
        self.sink.update(snapshot)

    def draw(self) -> None:
        self.sink.draw()

    def close(self, status: str = "done") -> None:
        self.status = status

    def finish(self, fallback: str) -> None:
        if self.status is not None or self.updated:  # nothing shown yet: show nothing
            last = self.last
            if last is not None and self.started is not None:
                # The final line measures the whole call: its cache lookup read the cached rows
                # before the batch's own clock started (a cached re-run is nothing else).
                whole = time.monotonic() - self.started
                self.sink.update(dataclasses.replace(last, elapsed_s=max(last.elapsed_s, whole)))
            self.sink.draw()
            self.sink.close(self.status or fallback)


def sink_for(backend: Any, progress: Any, label: str) -> Any:
    batch = getattr(getattr(backend, "config", None), "batch", None)
    timing = {"heartbeat_s": batch.heartbeat_s, "stall_s": batch.stall_s} if batch else {}
    return make_sink(progress, label=label, **timing)


def _batch_options(force_refresh: bool, sink: Any, draw_in_loop: bool, cached_rows: int,
                   keys: list[str] | None) -> dict[str, Any]:
    """``run_batched``'s keyword arguments for one call."""
    options: dict[str, Any] = {"force_refresh": force_refresh, "progress": sink, "draw_in_loop": draw_in_loop}
    if cached_rows:  # only a backend with lookup() answered rows itself; others need not know it
        options["cached_rows"] = cached_rows
    if keys is not None:  # only a backend with lookup_keyed() made them
        options["looked_up_keys"] = keys
    return options


@contextlib.contextmanager
def _finished_as(sink: CloseOnCaller, *, interrupted_by: type[BaseException]) -> Iterator[None]:
    """Finish ``sink`` with how the block ended: done, aborted (``BatchAborted``), interrupted
    (``interrupted_by``), else error. The batch's own closing status, when it closed, wins."""
    status = "error"
    try:
        yield
        status = "done"
    except BatchAborted:
        status = "aborted"
        raise
    except interrupted_by:
        status = "interrupted"
        raise
    finally:
        sink.finish(status)


def run_batch(
    backend: Any,
    requests: Sequence[MinimaLlmRequest],
    *,
    progress: Any,
    force_refresh: bool,
    label: str,
    cached_rows: int,
    guard: Callable[[Coroutine[Any, Any, Any]], Coroutine[Any, Any, Any]] = lambda c: c,
    setup: Callable[[Any], Any] = lambda sink: sink,
    started: float | None = None,
    keys: list[str] | None = None,
) -> list[Any]:
    """Run one batch from sync code (a script or a kernel cell), drawing on this thread.

    ``guard`` wraps the batch's coroutine (a schema check or a spend cap set around it);
    ``setup`` prepares the sink (its preview and notes); ``started`` (``time.monotonic()``
    when the call began) makes the final line's rates cover the whole call; ``keys`` are the
    requests' cache keys from the caller's lookup (``backend.lookup_keyed``), or None."""
    from ..engine.sync import run_sync  # loaded on first use: keeps `import minima_nb` cheap

    sink = CloseOnCaller(setup(sink_for(backend, progress, label)), started)
    with _finished_as(sink, interrupted_by=KeyboardInterrupt):
        batch = guard(backend.run_batched(requests, **_batch_options(force_refresh, sink, False,
                                                                     cached_rows, keys)))
        return run_sync(batch, on_poll=sink.draw)


async def arun_batch(
    backend: Any,
    requests: Sequence[MinimaLlmRequest],
    *,
    progress: Any,
    force_refresh: bool,
    label: str,
    cached_rows: int,
    guard: Callable[[Coroutine[Any, Any, Any]], Coroutine[Any, Any, Any]] = lambda c: c,
    setup: Callable[[Any], Any] = lambda sink: sink,
    started: float | None = None,
    keys: list[str] | None = None,
) -> list[Any]:
    sink = CloseOnCaller(setup(sink_for(backend, progress, label)), started)
    # a cancelled await (the caller's Ctrl-C) or an error both read as interrupted here
    with _finished_as(sink, interrupted_by=BaseException):
        results: list[Any] = await guard(backend.run_batched(
            requests, **_batch_options(force_refresh, sink, True, cached_rows, keys)))
        return results
