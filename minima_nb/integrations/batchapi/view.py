"""What a waiting batch job shows: per-batch state, rows done / failed / expired, time waited.

:func:`job_status` reads a job's state file into a :class:`JobStatus`: each batch with its
provider state (validating, in progress, finalizing, completed, expired...) and the provider's
request counts, and the job's prompts (finished ones from the items, running ones from the
provider's counts). Two views draw it:

- :class:`TextView`: one line when the job starts, whenever a batch changes state, every
  ``heartbeat_s``, and a summary at the end (a terminal, a log, or a cell with
  ``progress="text"``);
- :class:`WidgetView`: in a Jupyter kernel, a bar of the job's prompts, a line of counts and a
  table of the batches (ipywidgets, imported when first drawn).

Counts are of distinct prompts (one input line each, what the provider counts); the job's
rows (duplicates included) are given beside them.

Both keep the latest status apart from drawing: ``update`` may run on the loop thread, while
``draw`` and ``close`` run on the caller's thread (``BatchJob.wait`` draws there, between polls),
so a printed line lands in the cell that is waiting.
"""

from __future__ import annotations

import html
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

from ...engine.progress import format_duration, running_in_notebook
from .results import DONE_CHUNKS
from .state import BatchState

__all__ = ["BatchLine", "JobStatus", "JobView", "TextView", "WidgetView", "job_status", "make_view"]

_WORDS = {"in_progress": "in progress", "cancelling": "cancelling", "written": "writing files",
          "uploading": "uploading", "uploaded": "uploaded", "creating": "creating"}


@dataclass(frozen=True)
class BatchLine:
    """One remote batch (one input file) as the provider last described it."""

    chunk_id: int
    batch_id: str | None
    round: int
    state: str
    lines: int
    completed: int
    failed: int
    expired: int


@dataclass(frozen=True)
class JobStatus:
    """A job at one moment: its batches and its prompts (the distinct prompts of its ``rows``:
    one line each, what the provider counts)."""

    job_id: str
    state: str
    batches: tuple[BatchLine, ...]
    prompts: int
    done: int
    failed: int
    expired: int
    waited_s: float
    rows: int = 0

    @property
    def finished(self) -> int:
        """Prompts with an outcome (answered or failed for good)."""
        return min(self.prompts, self.done + self.failed)

    def states(self) -> str:
        """``"1 validating, 2 in progress"``: the batches not yet read back, by state."""
        counts: dict[str, int] = {}
        for batch in self.batches:
            if batch.state != "ingested":
                counts[batch.state] = counts.get(batch.state, 0) + 1
        return ", ".join(f"{n} {_WORDS.get(s, s)}" for s, n in counts.items()) or "all read back"

    def line(self) -> str:
        """The one-line text of this status (the heartbeat's line)."""
        return (f"batch job {self.job_id}: {len(self.batches)} batch{'es' if len(self.batches) != 1 else ''} "
                f"({self.states()}) | prompts {self.finished:,}/{self.prompts:,} done, {self.failed:,} failed, "
                f"{self.expired:,} expired ({self.rows:,} rows) | waited {format_duration(self.waited_s)}")


def job_status(state: BatchState, job_id: str, waited_s: float) -> JobStatus:
    """The job's status from its state file (no remote call)."""
    job = state.job(job_id) or {}
    counts = state.counts(job_id)
    batches = []
    running_done = running_failed = expired = 0
    for c in state.chunks(job_id):
        if c["status"] == "discarded":
            continue
        lines, completed, failed = c["lines"] or 0, c["completed"] or 0, c["failed"] or 0
        remote = c["remote_status"] or c["status"]
        gone = max(0, lines - completed - failed) if remote == "expired" else 0
        shown = "ingested" if c["status"] in DONE_CHUNKS else remote
        batches.append(BatchLine(c["chunk_id"], c["batch_id"], c["round"], shown, lines, completed, failed, gone))
        expired += gone
        if c["status"] not in DONE_CHUNKS:
            running_done, running_failed = running_done + completed, running_failed + failed
    return JobStatus(job_id, str(job.get("state") or "?"), tuple(batches), sum(counts.values()),
                     counts.get("done", 0) + running_done, counts.get("failed", 0) + running_failed,
                     expired, waited_s, int(job.get("rows") or 0))


class JobView:
    """A view of a waiting job: ``update`` from any thread, ``draw``/``close`` on the caller's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: JobStatus | None = None
        self._closed = False

    def update(self, status: JobStatus) -> None:
        """Keep ``status`` as the latest (any thread)."""
        with self._lock:
            self._latest = status

    def latest(self) -> JobStatus | None:
        """The latest status, or None before the first."""
        with self._lock:
            return self._latest

    def draw(self) -> None:
        """Show the latest status if it is due."""

    def close(self, status: str = "done") -> None:
        """Show the final state once (``done``, ``interrupted`` or ``error``)."""


class TextView(JobView):
    """Lines of text (see the module docstring), to ``stream`` (standard error by default)."""

    def __init__(self, *, heartbeat_s: float = 10.0, stream: TextIO | None = None) -> None:
        super().__init__()
        self.heartbeat_s, self._stream = heartbeat_s, stream
        self._shown: tuple[str, ...] | None = None
        self._beat_at = 0.0

    def draw(self) -> None:
        status = self.latest()
        if status is None or self._closed:
            return
        states = tuple(b.state for b in status.batches)
        now = time.monotonic()
        if states != self._shown or now - self._beat_at >= self.heartbeat_s:
            self._shown, self._beat_at = states, now
            self._write(status.line())

    def close(self, status: str = "done") -> None:
        if self._closed:
            return
        self._closed = True
        latest = self.latest()
        if latest is not None:
            word = {"done": latest.state, "interrupted": "still running (stopped waiting)"}.get(status, status)
            self._write(f"{latest.line()} | {word}")

    def _write(self, line: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr  # a redirected stderr is honoured
        stream.write(line + "\n")
        stream.flush()


class WidgetView(JobView):
    """An ipywidgets view: a bar of the job's prompts, a line of counts, a table of its batches."""

    def __init__(self, min_interval_s: float = 0.2) -> None:
        super().__init__()
        self._widgets: Any = None
        self._drawn: JobStatus | None = None
        self._drawn_at = 0.0
        self.min_interval_s = min_interval_s

    def _show(self, status: JobStatus) -> None:
        import ipywidgets  # a kernel has it: only drawn there
        from IPython.display import display

        if self._widgets is None:
            bar = ipywidgets.IntProgress(min=0, max=max(status.prompts, 1), description="batch job")
            counts, table = ipywidgets.HTML(), ipywidgets.HTML()
            self._widgets = (bar, counts, table)
            display(ipywidgets.VBox([ipywidgets.HBox([bar, counts]), table]))
        bar, counts, table = self._widgets
        bar.max, bar.value = max(status.prompts, 1), status.finished if status.prompts else 1
        counts.value = html.escape(f"{status.finished:,}/{status.prompts:,} prompts done, {status.failed:,} failed, "
                                   f"{status.expired:,} expired ({status.rows:,} rows) | waited "
                                   f"{format_duration(status.waited_s)}")
        cells = "".join(
            f"<tr><td>{html.escape(b.batch_id or '-')}</td><td>{b.round}</td>"
            f"<td>{html.escape(_WORDS.get(b.state, b.state))}</td><td>{b.completed:,}/{b.lines:,}</td>"
            f"<td>{b.failed:,}</td><td>{b.expired:,}</td></tr>" for b in status.batches)
        table.value = (f"<table><tr><th>batch</th><th>round</th><th>state</th><th>done</th><th>failed</th>"
                       f"<th>expired</th></tr>{cells}</table><div>job {html.escape(status.job_id)}: "
                       f"{html.escape(status.state)}</div>")
        self._drawn, self._drawn_at = status, time.monotonic()

    def draw(self) -> None:
        status = self.latest()
        if status is None or self._closed or status == self._drawn:
            return
        if time.monotonic() - self._drawn_at >= self.min_interval_s:
            self._show(status)

    def close(self, status: str = "done") -> None:
        if self._closed:
            return
        self._closed = True
        latest = self.latest()
        if latest is None:
            return
        self._show(latest)
        self._widgets[0].bar_style = "success" if status == "done" else "danger"


def make_view(progress: Any, heartbeat_s: float) -> JobView | None:
    """The view for ``progress`` (True: the widget in a kernel, else text; "text"; "notebook";
    False/None: none; a :class:`JobView` as is); None for another kind of sink object."""
    if isinstance(progress, JobView):
        return progress
    if progress is None or progress is False or progress == "none":
        return JobView()
    if progress is True:
        progress = "notebook" if running_in_notebook() else "text"
    if progress == "text":
        return TextView(heartbeat_s=heartbeat_s)
    if progress == "notebook":
        return WidgetView()
    return None
