"""The batch meter: live counters of one batch, turned into :class:`BatchSnapshot` values.

The batch runner owns the meter and counts rows (done, cached, failed); the backend counts HTTP
attempts (sent, received, in flight, retrying, tokens) into whichever meter is active in the
current context. The meter travels in a :class:`contextvars.ContextVar`, which asyncio copies
into every task a worker starts, so two batches running at once on one backend keep apart.
All counting happens on the event loop thread; sinks only ever see immutable snapshots.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar

from ..types import BatchSnapshot

RATE_WINDOW_S = 30.0
PREVIEW_ROWS = 3  # answers and failures kept for the live preview


class BatchMeter:
    """Counters of one batch. Plain attributes: the loop thread is the only writer."""

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.total = total
        self.done = 0
        self.cached = 0
        self.failed = 0
        self.retrying = 0
        self.in_flight = 0
        self.sent = 0
        self.received = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.latency_sum = 0.0
        self.latency_n = 0
        self.last_error: str | None = None
        self.started = clock()
        self.last_completion = self.started
        # (time, done) samples for the recent completion rate; bounded so memory stays flat.
        self._samples: deque[tuple[float, int]] = deque(maxlen=512)
        self._answers: deque[tuple[str, str]] = deque(maxlen=PREVIEW_ROWS)
        self._failures: deque[tuple[str, str]] = deque(maxlen=PREVIEW_ROWS)

    def preview(self, request_id: str, text: str | None, error: str | None) -> None:
        """Keep a finished row for the preview (O(1): only the last few are kept)."""
        if error is not None:
            self._failures.append((request_id, error))
        elif text is not None:
            self._answers.append((request_id, text))

    def row_finished(self, *, cached: bool = False, failed: bool = False, error: str | None = None) -> None:
        """Count one input row as finished."""
        self.done += 1
        if cached:
            self.cached += 1
        if failed:
            self.failed += 1
            self.last_error = error
        self.last_completion = self.clock()

    def rows_finished_from_cache(self, count: int) -> None:
        """Count ``count`` rows answered by the cache before any request went out."""
        self.done += count
        self.cached += count
        if count:
            self.last_completion = self.clock()

    def attempt_started(self) -> None:
        """An HTTP attempt left (the backend calls this)."""
        self.sent += 1
        self.in_flight += 1

    def attempt_ended(self, *, answered: bool) -> None:
        """An HTTP attempt came back (``answered``) or died (timeout, dropped connection)."""
        self.in_flight -= 1
        if answered:
            self.received += 1

    def answer_received(self, input_tokens: int | None, output_tokens: int | None, latency_s: float) -> None:
        """A usable answer arrived: count its tokens and latency."""
        self.input_tokens += input_tokens or 0
        self.output_tokens += output_tokens or 0
        self.latency_sum += latency_s
        self.latency_n += 1

    def snapshot(self) -> BatchSnapshot:
        """An immutable view for progress sinks."""
        now = self.clock()
        elapsed = now - self.started
        self._samples.append((now, self.done))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()
        t0, done0 = self._samples[0]
        span = now - t0
        if span > 0.5:
            per_s = (self.done - done0) / span
        else:
            per_s = self.done / elapsed if elapsed > 0 else 0.0
        remaining = self.total - self.done
        eta = remaining / per_s if per_s > 0 else (0.0 if remaining == 0 else None)
        return BatchSnapshot(
            total=self.total,
            done=self.done,
            cached=self.cached,
            failed=self.failed,
            retrying=self.retrying,
            in_flight=self.in_flight,
            sent=self.sent,
            received=self.received,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            rpm=per_s * 60.0,
            elapsed_s=elapsed,
            eta_s=eta,
            idle_s=now - self.last_completion,
            mean_latency_s=self.latency_sum / self.latency_n if self.latency_n else None,
            last_error=self.last_error,
            recent_answers=tuple(self._answers),
            recent_failures=tuple(self._failures),
        )


current_meter: ContextVar[BatchMeter | None] = ContextVar("minima_nb_batch_meter", default=None)
