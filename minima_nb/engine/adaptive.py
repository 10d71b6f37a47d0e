"""The adaptive request rate: the limit the pacer learns from 429s when no header states one.

Many OpenAI-compatible servers (vLLM behind a gateway, local proxies, some providers) say nothing
about their limit until they refuse a request with a 429. :class:`AdaptiveRate` finds that limit
from the 429s alone and holds the send rate just under it; the pacer then paces at
``min(configured rpm, the server's header limit, the adaptive rate)``. It owns no clock and no
sleep: the pacer tells it what happened and when.

Design: AIMD on the send rate, one cut per episode, probing that speeds up
--------------------------------------------------------------------------
- **Inactive until the first 429.** With no 429 seen there is no adaptive limit at all, so a
  server that states its limit in headers is paced exactly as before.
- **Multiplicative decrease, once per episode.** A 429 for a request *started after* the last
  cut cuts the rate to ``BETA`` (0.9) times the pacing rate, or times the rate really being
  sent when that is well under it (fewer workers than the rate needs: counted from the starts
  of the last 10 s since the last pause). When the 429 asks for a long wait (``Retry-After`` of
  10 s or more) and the run is a minute old, the cut also goes no higher than the successes of
  the last 60 s: a limit enforced over a whole minute refuses late, only once its window is
  full, and then that count is what it really lets through. 429s of requests that were already in flight at
  the cut answered for the old rate and cut nothing, as TCP cuts once per round trip: with 64
  requests in flight one overshoot would otherwise cut the rate 64 times. The rate before the cut
  is kept as ``peak``: where the server last said no.
- **Recovery, then probing.** Every ``EPOCH`` (30) successes of requests started since the last
  change raise the rate. Below ``peak`` by half the remaining gap (at least 1 % of ``peak``):
  quickly back to just under the limit, slowly near it. At or above ``peak`` by a step that
  starts at 1 % of ``peak`` and doubles with each epoch without a 429 (1, 2, 4, 8 ... %, at most
  ``MAX_STEP``): a limit that is still there is met again after a 1-2 % overshoot, that is one
  429 per cycle of about 150 answers; a limit that rose is followed up geometrically (about
  +70 % in 6 epochs).
- **Counted in answers, not seconds.** Epochs are counted in successes, so the controller keeps
  the same pace in requests at every rate (30 answers are 6 s at 300 rpm, 0.3 s at 6,000), and
  an answer from before the last change says nothing about the new rate.
- **A floor.** The rate never goes below ``FLOOR_FRACTION`` of the configured rpm, so 429s that
  have nothing to do with the rate (a flaky gateway) cannot starve a batch; below that floor
  the shared cooldown still spaces the retries.

Holding at ``0.9 x`` to ``1.0 x`` the limit uses about 95 % of it on average. The peer this
beats, Inspect AI, only backs off on 429 (retries with exponential backoff) and never probes
back up: a limit that rises is never used. While the adaptive rate is active the pacer allows
no burst: a server that refuses us may enforce its limit over a window as short as a second.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["AdaptiveRate"]

BETA = 0.9  # the cut: 10 % under the rate that met a 429
EPOCH = 20  # successes between two raises
FIRST_STEP = 0.02  # the first probe above the peak, as a fraction of it
MAX_STEP = 0.32  # the largest raise per epoch, as a fraction of the peak
FLOOR_FRACTION = 1 / 16
_METER_S = 10.0  # the send rate is counted over the last 10 s of starts
_METER_MIN_S = 1.0  # ...but never over less than a second (a burst is not a rate)
_METER_MIN_STARTS = 5
_LONG_WAIT_S = 10.0  # a Retry-After this long: a long window is full, count what it let through
_NOT_BINDING = 0.75  # sending under 3/4 of the pacing rate: cut from what is really sent


class AdaptiveRate:
    """The send rate (requests per minute) learned from 429s; see the module docstring.

    ``rate`` is ``None`` until the first 429 (no adaptive limit). Times are on the pacer's clock.
    """

    def __init__(self, ceiling: float) -> None:
        self.ceiling = float(ceiling)  # the configured rpm: never paced above it, floor from it
        self.rate: float | None = None
        self.peak = 0.0
        self.cuts = 0
        self._changed_at = -math.inf  # answers to requests started before this are old news
        self._cut_at = -math.inf
        self._successes = 0
        self._step = FIRST_STEP
        self._starts: deque[float] = deque(maxlen=4096)
        self._answers: deque[float] = deque(maxlen=1 << 16)  # 2xx times, for the last minute's count
        self._first_start = math.inf

    def started(self, now: float) -> None:
        """A request starts now (counted for the send rate)."""
        self._starts.append(now)
        self._first_start = min(self._first_start, now)

    def sent_rate(self, now: float, since: float = -math.inf) -> float | None:
        """Requests per minute started over the last ``_METER_S`` seconds and after ``since``
        (the end of the last pause: a pause is not the rate); ``None`` when too few to say."""
        starts = self._starts
        while starts and starts[0] < now - _METER_S:
            starts.popleft()
        recent = [t for t in starts if t >= since] if since > -math.inf else list(starts)
        if len(recent) < _METER_MIN_STARTS:
            return None
        span = max(_METER_MIN_S, now - recent[0])
        return len(recent) * 60.0 / span

    def limited(self, started_at: float, now: float, pacing_rate: float | None,
                resumed_at: float = -math.inf, retry_after: float | None = None) -> bool:
        """A 429 answered a request started at ``started_at``; returns whether the rate was cut.

        ``pacing_rate`` is the rate the pacer was pacing at (``None``: unpaced), ``resumed_at``
        when its last pause ended (the send rate is counted after it), ``retry_after`` the
        server's wait in seconds if it said one.
        """
        if started_at < self._cut_at:
            return False  # in flight before the last cut: it answers for the old rate
        sent = self.sent_rate(now, resumed_at)
        if pacing_rate and sent and sent > _NOT_BINDING * pacing_rate:
            sent = None  # sending about at the pacing rate: the count is noise, the rate is known
        current = [r for r in (pacing_rate, sent) if r]
        if not current:
            return False
        cut = BETA * min(current)
        answered = self._answered_last_minute(now) if (retry_after or 0) >= _LONG_WAIT_S else None
        if answered is not None:
            cut = min(cut, answered)  # a per-minute limit lets about this many through a minute
        self.peak = cut / BETA  # where the limit was met: recovery heads back towards it
        self.rate = max(self.ceiling * FLOOR_FRACTION, cut)
        self.cuts += 1
        self._cut_at = self._changed_at = now
        self._successes = 0
        self._step = FIRST_STEP
        return True

    def _answered_last_minute(self, now: float) -> float | None:
        """Successes in the last 60 s, once the first start is a minute old (else ``None``)."""
        answers = self._answers
        while answers and answers[0] < now - 60.0:
            answers.popleft()
        return float(len(answers)) if now - self._first_start >= 60.0 and answers else None

    def succeeded(self, started_at: float, now: float) -> None:
        """A 2xx answered a request started at ``started_at``: after ``EPOCH`` of them, raise."""
        self._answers.append(now)
        rate = self.rate
        if rate is None or started_at < self._changed_at:
            return
        self._successes += 1
        if self._successes < EPOCH:
            return
        if rate < self.peak:
            rate += max((self.peak - rate) / 2, FIRST_STEP * self.peak)
        else:
            rate += self._step * self.peak
            self._step = min(MAX_STEP, self._step * 2)
        self.rate = min(rate, self.ceiling)
        self._changed_at = now
        self._successes = 0

    def describe(self) -> str:
        """A few words for ``RatePacer.describe``, e.g. ``"adaptive 270 after 3 × 429"``."""
        if self.rate is None:
            return ""
        return f"adaptive {self.rate:.0f} after {self.cuts} × 429"
