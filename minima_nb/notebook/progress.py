"""The notebook's progress bar: a ``tqdm.auto`` bar (an ipywidgets bar in a Jupyter kernel).

:class:`NotebookSink` draws a running batch's snapshots; importing this module registers it as
the sink the engine uses for ``progress=True`` in a kernel and ``progress="notebook"``. tqdm is
imported only when a bar is first drawn.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from ..engine.progress import Clock, SnapshotSink, format_duration, register_bar_sink
from ..types import BatchSnapshot
from .preview import Preview

_TOKEN_RATE_WINDOW_S = 10.0
MIN_RATE_SPAN_S = 1.0  # a rate is shown only once it rests on at least this much data


class _RecentRate:
    """Units per second over the last ``window_s`` of batch time (e.g. output tokens/s)."""

    def __init__(self, window_s: float = _TOKEN_RATE_WINDOW_S) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, at_s: float, count: int) -> float | None:
        """Record ``count`` (a running total) at batch time ``at_s``; return the recent rate."""
        self._samples.append((at_s, count))
        while len(self._samples) > 2 and at_s - self._samples[1][0] >= self._window_s:
            self._samples.popleft()
        first_at, first_count = self._samples[0]
        if at_s - first_at < MIN_RATE_SPAN_S:
            return None  # a fraction of a second extrapolated is not a rate
        return (count - first_count) / (at_s - first_at)


class NotebookSink(SnapshotSink):
    """A ``tqdm.auto`` bar: an ipywidgets bar in a Jupyter kernel, a text bar elsewhere.

    The bar's ``total`` is the batch size and ``n`` the finished rows; the postfix carries
    cached, failed, retrying, the requests actually sent, and (once a second of data is there)
    requests/min and output tokens/s, then the eta. The final line has the requests sent, the
    real tokens/s (left out when unknown) and rows/s. On a failed close the bar stays on screen,
    marked red (``bar_style="danger"`` on the widget). In a kernel a :class:`Preview` of the last
    answers and failures sits under the bar (``configure(preview=False)`` turns it off);
    ``note(snapshot)``, when set, adds a word such as the spend against a cap.
    """

    def __init__(
        self,
        *,
        label: str = "minima",
        min_interval_s: float = 0.2,
        clock: Clock = time.monotonic,
        tqdm_cls: Any = None,
    ) -> None:
        super().__init__(label, clock)
        self.min_interval_s = min_interval_s
        self._tqdm_cls = tqdm_cls
        self._bar: Any = None
        self._drawn_version = 0
        self._drawn_at: float | None = None
        self._token_rate = _RecentRate()
        self._request_rate = _RecentRate()
        self.preview: Preview | None = Preview(clock=clock)
        self.note: Any = None
        self._final = False

    def configure(self, *, preview: bool = True, prompt_of: Any = None, note: Any = None,
                  answer_of: Any = None) -> None:
        """Set up the preview (off with ``preview=False``) and a note; before the first draw."""
        self.preview = Preview(prompt_of, answer_of=answer_of, clock=self._clock) if preview else None
        self.note = note

    @property
    def bar(self) -> Any:
        """The tqdm bar, once the first snapshot was drawn (``None`` before)."""
        return self._bar

    def draw(self) -> None:
        """Redraw the bar if the snapshot changed and ``min_interval_s`` has passed."""
        with self._draw_lock:
            if self._closed:
                return
            snapshot, version, _ = self._latest.get()
            if snapshot is None or version == self._drawn_version:
                return
            now = self._clock()
            if self._drawn_at is not None and now - self._drawn_at < self.min_interval_s:
                return
            self._render(snapshot, snapshot.done)
            self._drawn_version = version
            self._drawn_at = now

    def _finish(self, snapshot: BatchSnapshot, status: str) -> None:
        """Draw the final state and close the bar, kept on screen; red unless ``"done"``."""
        self._final = True
        if status == "done":
            self._render(snapshot, max(snapshot.done, snapshot.total))
        else:
            self._render(snapshot, snapshot.done)
            self._mark_failed(status)
        # tqdm's notebook bar turns green on close when n reached total, red otherwise.
        self._bar.close()

    def _render(self, snapshot: BatchSnapshot, n: int) -> None:
        bar = self._ensure_bar(snapshot)
        bar.n = n
        final = self._final
        bar.set_postfix_str(self._final_postfix(snapshot) if final else self._postfix(snapshot),
                            refresh=False)
        bar.refresh()
        if self.preview is not None:
            self.preview.draw(snapshot, final=final)

    def _ensure_bar(self, snapshot: BatchSnapshot) -> Any:
        if self._bar is None:
            self._bar = self._make_bar(snapshot.total)
        elif self._bar.total != snapshot.total:
            # A total that grows (a Dask computation's partitions reporting in): reset() also
            # resizes the widget's range, but restarts tqdm's clock; keep the elapsed time.
            started = getattr(self._bar, "start_t", None)
            self._bar.reset(total=snapshot.total)
            if started is not None:
                self._bar.start_t = started
        return self._bar

    def _make_bar(self, total: int) -> Any:
        tqdm_cls = self._tqdm_cls
        if tqdm_cls is None:
            from tqdm.auto import tqdm  # lazy: only a shown bar pays for tqdm

            tqdm_cls = tqdm
        options = {"total": total, "desc": self.label, "unit": "row",
                   "leave": True,  # the final state must stay on screen, failed or not
                   "bar_format": "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"}
        if self.preview is None or not _is_widget_bar(tqdm_cls):
            return tqdm_cls(**options)
        bar = tqdm_cls(**options, display=False)  # shown below, in a box with the preview
        from IPython.display import display

        display(self.preview.box(bar.container))
        return bar

    def _postfix(self, snapshot: BatchSnapshot) -> str:
        tokens_per_s = self._token_rate.add(snapshot.elapsed_s, snapshot.output_tokens)
        requests_per_s = self._request_rate.add(snapshot.elapsed_s, snapshot.sent)
        parts = [f"cached {snapshot.cached:,}", f"failed {snapshot.failed:,}",
                 f"retrying {snapshot.retrying:,}", f"{snapshot.sent:,} requests"]
        if requests_per_s is not None:
            parts.append(f"{requests_per_s * 60:,.0f} req/min")
        if tokens_per_s is not None and snapshot.output_tokens:
            parts.append(f"{tokens_per_s:,.0f} tok/s")
        parts.append(f"eta {format_duration(snapshot.eta_s)}")
        return ", ".join(parts + self._notes(snapshot))

    def _final_postfix(self, snapshot: BatchSnapshot) -> str:
        """The closing line: counts, and rates only where they are measured, not guessed."""
        # Unlike the live rates this is a measurement over the whole call (its elapsed time
        # runs from the call's start, cache lookup included): no extrapolation, so no minimum.
        elapsed = snapshot.elapsed_s
        parts = [f"cached {snapshot.cached:,}", f"failed {snapshot.failed:,}",
                 f"{snapshot.sent:,} requests"]
        if elapsed > 0:
            if snapshot.output_tokens:
                parts.append(f"{snapshot.output_tokens / elapsed:,.0f} tok/s")
            parts.append(f"{snapshot.done / elapsed:,.0f} rows/s")
        return ", ".join(parts + self._notes(snapshot))

    def _notes(self, snapshot: BatchSnapshot) -> list[str]:
        return [self.note(snapshot)] if self.note is not None else []

    def _mark_failed(self, status: str) -> None:
        bar = self._bar
        bar.set_description_str(f"{self.label} ({status})", refresh=False)
        bar.colour = "red"
        if hasattr(bar, "container"):
            # The ipywidgets bar: mark it as failed before close(), which then keeps it
            # shown and does not turn it green even when n == total.
            bar.display(bar_style="danger")
        bar.refresh()


def _is_widget_bar(tqdm_cls: Any) -> bool:
    """Whether ``tqdm_cls`` draws an ipywidgets bar (tqdm.notebook's), which has a container."""
    try:
        from tqdm.notebook import tqdm as widget_bar
    except ImportError:  # pragma: no cover - ipywidgets is a dependency
        return False
    return isinstance(tqdm_cls, type) and issubclass(tqdm_cls, widget_bar)


register_bar_sink(lambda label: NotebookSink(label=label))
