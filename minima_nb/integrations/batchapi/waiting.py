"""Waiting for a job and cancelling it: the loop that steps a job until it is final, with progress.

:class:`Waiting` is the half of :class:`~.job.BatchJob` that waits: it steps the job with a
backoff (honouring ``Retry-After``) and draws its progress each step. Interrupting a wait stops
the waiting only: the remote batches keep running and the message says how to resume or
cancel (``on_interrupt="cancel"`` cancels instead). A cancel is recorded first, then sent,
then followed through ``cancelling`` to ``cancelled``, keeping the partial output.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

from ...engine.progress import make_sink
from ...errors import MinimaError
from .results import snapshot
from .view import job_status, make_view

__all__ = ["Waiting"]


class Waiting:
    """What a batch job does while it waits (mixed into :class:`~.job.BatchJob`)."""

    job_id: str
    config: Any
    state: Any
    on_interrupt: str

    async def astep(self) -> float | None:
        raise NotImplementedError

    @property
    def final(self) -> bool:
        raise NotImplementedError

    async def await_done(self, timeout_s: float | None = None, *, progress: Any = True) -> Any:
        """Step until the job is final (bounded by ``timeout_s``, default ``max_poll_hours``),
        drawing its progress between steps: ``True`` the widget in a Jupyter kernel and text
        lines elsewhere, ``"text"``, ``"notebook"``, ``False``, or a view (see :mod:`.view`)."""
        view, sink = self._views(progress)
        with self._shown_until_done(view or sink, (KeyboardInterrupt, asyncio.CancelledError)):
            await self._steps(view, sink, timeout_s, draw=True)
            return self

    def wait(self, timeout_s: float | None = None, *, progress: Any = True) -> Any:
        """:meth:`await_done` from sync code (Ctrl-C stops waiting, the batches keep running).

        The job is stepped on minima_nb's loop; its progress is drawn, and the interrupt
        message printed, on this thread, so they land in the cell that waits.
        """
        from ...engine.sync import run_sync

        view, sink = self._views(progress)
        shown = view or sink
        with self._shown_until_done(shown, (KeyboardInterrupt,), draw_last=True):
            run_sync(self._steps(view, sink, timeout_s, draw=False), on_poll=shown.draw)
            return self

    @contextlib.contextmanager
    def _shown_until_done(self, shown: Any, interrupts: tuple[type[BaseException], ...], *,
                          draw_last: bool = False) -> Iterator[None]:
        """Close the display with how the wait ended: done, interrupted (``interrupts``: the
        message says how to resume or cancel) or error; ``draw_last`` draws once more first
        (a sync wait draws on its own thread between polls)."""
        status = "interrupted"
        try:
            yield
            status = "done"
        except interrupts:
            self._say_interrupted()
            raise
        except BaseException:
            status = "error"
            raise
        finally:
            if draw_last:
                shown.draw()
            shown.close(status)

    def _views(self, progress: Any) -> tuple[Any, Any]:
        """(a job view, or None) and (an engine sink for a sink object given as ``progress``)."""
        view = make_view(progress, self.config.batch.heartbeat_s)
        sink = None if view is not None else make_sink(progress, label=f"batch {self.job_id}")
        return view, sink

    async def _steps(self, view: Any, sink: Any, timeout_s: float | None, *, draw: bool) -> None:
        parasail = self.config.parasail
        started = time.monotonic()
        deadline = started + (timeout_s if timeout_s is not None else parasail.max_poll_hours * 3600)
        delay = parasail.poll_interval_s / 8
        try:
            while True:
                retry_after = await self.astep()
                if view is not None:
                    view.update(job_status(self.state, self.job_id, time.monotonic() - started))
                else:
                    sink.update(snapshot(self.state, self.job_id, started))
                if draw:
                    (view or sink).draw()
                if self.final:
                    return
                if time.monotonic() > deadline:
                    raise MinimaError(f"batch job {self.job_id} is still running after the wait limit; "
                                      f"resume with {self._resume_hint()}")
                await asyncio.sleep(max(delay, retry_after or 0.0))
                delay = min(parasail.poll_interval_s, delay * 2)
        except (KeyboardInterrupt, asyncio.CancelledError):
            if self.on_interrupt == "cancel":
                await asyncio.shield(self._request_cancel())
            raise

    def _say_interrupted(self) -> None:
        print(f"\nminima_nb: stopped waiting for batch job {self.job_id}; its batches keep running "
              f"{'until cancelled' if self.on_interrupt == 'cancel' else 'remotely'}. Resume with "
              f"{self._resume_hint()}; cancel with `minima-nb batch cancel {self.job_id}`.", file=sys.stderr)

    def _resume_hint(self) -> str:
        return f"BatchJob.open({self.job_id!r}).wait() or `minima-nb batch wait {self.job_id}`"

    async def _request_cancel(self) -> None:
        if self.state.job(self.job_id) and not self.final:
            self.state.update_job(self.job_id, cancel_requested_at=time.time())
            await self.astep()

    async def acancel(self, *, wait: bool = True) -> Any:
        """Cancel: recorded first, then sent; waits through ``cancelling`` and keeps partial output."""
        await self._request_cancel()
        return await self.await_done(progress=False) if wait else self

    def cancel(self, *, wait: bool = True) -> Any:
        """:meth:`acancel` from sync code."""
        from ...engine.sync import run_sync

        return run_sync(self.acancel(wait=wait))

