"""Progress sinks: where a running batch's :class:`~minima_nb.types.BatchSnapshot` is shown.

Counting happens on the event loop thread, drawing on the cell's (or script's) thread. The batch
runner hands each new snapshot to ``sink.update()``, which only stores it (O(1), any thread);
whoever waits for the batch calls ``sink.draw()`` now and then, and the sink renders the newest
snapshot at its own pace. ``sink.close(status)`` renders the end state once.

Two sinks live here: :class:`NullSink` (progress off) and :class:`TextSink` (a heartbeat line on
a stream, for terminals and scripts). The notebook's bar is the notebook layer's
(``minima_nb.notebook.progress``), which registers it with :func:`register_bar_sink` when it is
imported (``import minima_nb`` does that), so the engine never imports tqdm or ipywidgets.
:func:`make_sink` picks one; IPython is never imported: :func:`running_in_notebook` looks at
modules that are already loaded.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol, TextIO, runtime_checkable

from ..errors import ConfigError
from ..types import BatchSnapshot

Clock = Callable[[], float]

#: The statuses the batch runner closes a sink with; any other word is shown as a failure.
STATUSES = ("done", "aborted", "interrupted", "error")

_LAST_ERROR_MAX_CHARS = 200


@runtime_checkable
class ProgressSink(Protocol):
    """What the batch runner needs from a progress display."""

    def update(self, snapshot: BatchSnapshot) -> None:
        """Store the newest snapshot; called from any thread, must be O(1) and never draw."""

    def draw(self) -> None:
        """Render the newest snapshot if it changed; the sink throttles itself."""

    def close(self, status: str = "done") -> None:
        """Render the final state; ``status`` is one of :data:`STATUSES`. Idempotent."""


def format_duration(seconds: float | None) -> str:
    """``h:mm:ss`` for a number of seconds (``"0:00:12"``, ``"1:02:03"``); ``"?"`` if unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _short_duration(seconds: float) -> str:
    """``"12.3s"`` under a minute, ``h:mm:ss`` beyond, for summary lines."""
    return f"{seconds:.1f}s" if seconds < 60 else format_duration(seconds)


def _short_error(message: str | None) -> str:
    """One line of a (possibly long, multi-line) error message."""
    if not message:
        return "none"
    line = " ".join(message.split())
    if len(line) > _LAST_ERROR_MAX_CHARS:
        line = line[: _LAST_ERROR_MAX_CHARS - 3] + "..."
    return line


def _is_finished(snapshot: BatchSnapshot) -> bool:
    return snapshot.done >= snapshot.total


class _Latest:
    """The newest snapshot, handed from the counting thread to the drawing thread.

    ``version`` grows with every put so the drawer can tell "changed" without comparing
    snapshots; ``received_at`` lets the drawer age a snapshot that nobody has replaced.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: BatchSnapshot | None = None
        self._version = 0
        self._received_at = 0.0

    def put(self, snapshot: BatchSnapshot) -> None:
        received_at = self._clock()
        with self._lock:
            self._snapshot = snapshot
            self._version += 1
            self._received_at = received_at

    def get(self) -> tuple[BatchSnapshot | None, int, float]:
        with self._lock:
            return self._snapshot, self._version, self._received_at


class NullSink:
    """Shows nothing (``progress=False``)."""

    def update(self, snapshot: BatchSnapshot) -> None:
        """Ignore the snapshot."""

    def draw(self) -> None:
        """Draw nothing."""

    def close(self, status: str = "done") -> None:
        """Nothing to close."""


class SnapshotSink:
    """What both visible sinks share: the latest snapshot kept apart from drawing, a one-time close."""

    def __init__(self, label: str, clock: Clock) -> None:
        self.label = label
        self._clock = clock
        self._latest = _Latest(clock)
        self._draw_lock = threading.Lock()
        self._closed = False

    def update(self, snapshot: BatchSnapshot) -> None:
        """Store the newest snapshot (any thread)."""
        if not self._closed:
            self._latest.put(snapshot)

    def close(self, status: str = "done") -> None:
        """Render the final state once; ``status`` is one of :data:`STATUSES`."""
        with self._draw_lock:
            if self._closed:
                return
            self._closed = True
            self._finish(self._latest.get()[0] or BatchSnapshot(total=0), status)

    def _finish(self, snapshot: BatchSnapshot, status: str) -> None:
        raise NotImplementedError


class TextSink(SnapshotSink):
    """A heartbeat line every ``heartbeat_s``, a stall warning, and a summary line on close.

    Meant for terminals, scripts and logs: each line stands alone (no carriage returns), so it
    reads the same in a log file. Writes to ``stream`` (standard error by default).
    """

    def __init__(
        self,
        *,
        label: str = "minima",
        heartbeat_s: float = 10.0,
        stall_s: float = 300.0,
        stream: TextIO | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(label, clock)
        self.heartbeat_s = heartbeat_s
        self.stall_s = stall_s
        self._stream = stream
        self._last_beat_at = clock()
        self._sent_at_last_beat = 0
        self._received_at_last_beat = 0
        # ``done`` when the current stall was reported; None while not stalled.
        self._stall_reported_at_done: int | None = None

    def draw(self) -> None:
        """Print a stall warning or a heartbeat line when one is due."""
        with self._draw_lock:
            if self._closed:
                return
            snapshot, _, received_at = self._latest.get()
            if snapshot is None:
                return
            now = self._clock()
            # A snapshot nobody replaced has grown older: count that toward the idle time.
            self._check_stall(snapshot, snapshot.idle_s + max(0.0, now - received_at))
            if now - self._last_beat_at >= self.heartbeat_s and not _is_finished(snapshot):
                self._write(self._heartbeat_line(snapshot, now))

    def _finish(self, snapshot: BatchSnapshot, status: str) -> None:
        """Print the one-line summary."""
        self._write(self._summary_line(snapshot, status))

    def _check_stall(self, snapshot: BatchSnapshot, idle_s: float) -> None:
        if _is_finished(snapshot) or idle_s < self.stall_s:
            self._stall_reported_at_done = None
            return
        if self._stall_reported_at_done == snapshot.done:
            return  # this stall was reported already
        self._stall_reported_at_done = snapshot.done
        self._write(
            f"{self.label}: WARNING no completion for {idle_s:.0f}s "
            f"({snapshot.done:,}/{snapshot.total:,} done); in flight: {snapshot.in_flight:,}; "
            f"last error: {_short_error(snapshot.last_error)}"
        )

    def _heartbeat_line(self, snapshot: BatchSnapshot, now: float) -> str:
        interval = max(now - self._last_beat_at, 1e-9)
        sent_rate = (snapshot.sent - self._sent_at_last_beat) / interval
        received_rate = (snapshot.received - self._received_at_last_beat) / interval
        self._last_beat_at = now
        self._sent_at_last_beat = snapshot.sent
        self._received_at_last_beat = snapshot.received
        latency = snapshot.mean_latency_s
        return (
            f"{self.label}: {snapshot.done:,}/{snapshot.total:,} ({snapshot.fraction:.1%})"
            f" | sent {sent_rate:.1f}/s, recv {received_rate:.1f}/s"
            f" | cached {snapshot.cached:,} | failed {snapshot.failed:,}"
            f" | retrying {snapshot.retrying:,} | in flight {snapshot.in_flight:,}"
            f" | eta {format_duration(snapshot.eta_s)}"
            f" | tokens {snapshot.input_tokens:,} in / {snapshot.output_tokens:,} out"
            f" | mean latency {'?' if latency is None else f'{latency:.2f}s'}"
            + (f" | last failure: {_short_error(snapshot.last_error)}" if snapshot.last_error else "")
        )

    def _summary_line(self, snapshot: BatchSnapshot, status: str) -> str:
        counts = (
            f"({snapshot.cached:,} cached, {snapshot.failed:,} failed, {snapshot.sent:,} sent, "
            f"{snapshot.input_tokens:,} tokens in / {snapshot.output_tokens:,} out)"
        )
        progress = f"{snapshot.done:,}/{snapshot.total:,}"
        elapsed = _short_duration(snapshot.elapsed_s)
        if snapshot.elapsed_s > 0:  # over the whole run: a measurement, not an extrapolation
            elapsed += f", {snapshot.done / snapshot.elapsed_s:,.0f} rows/s"
        if status == "done":
            line = f"{self.label}: done {progress} in {elapsed} {counts}"
            show_error = snapshot.failed > 0
        else:
            word = "stopped by an error" if status == "error" else status
            line = f"{self.label}: {word} at {progress} after {elapsed} {counts}"
            show_error = True
        if show_error and snapshot.last_error:
            line += f"; last error: {_short_error(snapshot.last_error)}"
        return line

    def _write(self, line: str) -> None:
        # Resolved on each write so a redirected sys.stderr (pytest, contextlib) is honoured.
        stream = self._stream if self._stream is not None else sys.stderr
        stream.write(line + "\n")
        stream.flush()


_bar_sink: Callable[[str], ProgressSink] | None = None


def register_bar_sink(factory: Callable[[str], ProgressSink]) -> None:
    """Make ``factory(label)`` the sink of ``progress="notebook"`` (and of ``True`` in a kernel)."""
    global _bar_sink
    _bar_sink = factory


def running_in_notebook() -> bool:
    """True inside a Jupyter kernel (a ZMQ shell); never imports IPython to find out."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    if get_ipython is None:
        return False
    try:
        shell = get_ipython()
    except Exception:  # a half-imported or broken IPython is not a kernel
        return False
    if shell is None:
        return False
    shell_classes = type(shell).__mro__  # Colab and others subclass the kernel's shell
    return any(cls.__name__ == "ZMQInteractiveShell" for cls in shell_classes) or (
        "ipykernel" in sys.modules and type(shell).__module__.startswith("ipykernel")
    )


def make_sink(
    progress: bool | str | ProgressSink | None = True,
    *,
    label: str = "minima",
    heartbeat_s: float = 10.0,
    stall_s: float = 300.0,
) -> ProgressSink:
    """Choose a sink: ``True`` a bar in a kernel and text elsewhere, ``False``/``None`` nothing.

    ``"text"``, ``"notebook"`` and ``"none"`` force a kind; a sink object is returned as is.
    """
    if progress is None or progress is False:
        return NullSink()
    if progress is True:
        kind = "notebook" if running_in_notebook() else "text"
    elif isinstance(progress, str):
        kind = progress.strip().lower()
    elif all(callable(getattr(progress, name, None)) for name in ("update", "draw", "close")):
        return progress
    else:
        raise ConfigError(
            f"progress={progress!r} is not understood: use True, False, 'text', 'notebook', "
            "'none' or an object with update(), draw() and close()."
        )
    if kind == "text":
        return TextSink(label=label, heartbeat_s=heartbeat_s, stall_s=stall_s)
    if kind == "notebook":
        if _bar_sink is None:
            raise ConfigError(
                "progress='notebook' needs the notebook layer: `import minima_nb` loads it.")
        return _bar_sink(label)
    if kind == "none":
        return NullSink()
    raise ConfigError(f"progress={progress!r}: choose 'text', 'notebook' or 'none'.")
