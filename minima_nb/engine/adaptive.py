"""The adaptive request rate: the limit the pacer learns from 429s when no header states one.

Many OpenAI-compatible servers (vLLM behind a gateway, local proxies, some providers) say nothing
about their limit until they refuse a request with a 429. :class:`AdaptiveRate` finds that limit
from the 429s alone and holds the send rate just under it; the pacer then paces at
``min(configured rpm, the server's header limit, the adaptive rate)``. It owns no clock and no
sleep: the pacer tells it what happened and when.

Design: AIMD on the send rate, one cut per episode, a hold, then probing that speeds up
----------------------------------------------------------------------------------------
- **Inactive until the first 429.** With no 429 seen there is no adaptive limit at all, so a
  server that states its limit in headers is paced exactly as before.
- **Multiplicative decrease, once per overshoot.** A 429 cuts the rate to ``BETA`` (0.9) times
  the pacing rate, or times the rate really being sent when that is well under it (fewer
  workers than the rate needs; counted from the starts of the last 10 s since the last pause).
  The server's window still holds the excess for a while after the cut: 429s for requests sent
  before the cut, or until its ``Retry-After`` (at least 1 s) has passed, belong to the same
  overshoot and cut nothing, as TCP cuts once per round trip (with 64 requests in flight one
  overshoot would otherwise cut the rate 64 times).
- **What the server let through bounds the cut.** The successes since the last cut or pause,
  spread over that time, are what the limit admitted; when 429s go on after a cut, the next cut
  goes no lower than needed and no higher than that. A limit enforced over a long window
  (10 s, a minute) refuses late, once the window is full, and then asks for a long wait: when
  ``Retry-After`` is 2 s or more (1 s is often a rounded-up crumb) the wait is added to that
  time. That finds the limit in one or two steps where cuts of 10 % would take many cycles of
  burst and pause.
- **Recovery, a hold, then probing.** The rate before the cut, ``peak``, is where the server
  last said no. Every ``EPOCH`` (20) successes of requests started since the last change move
  the rate: below ``peak`` up by half the remaining gap (at least 2 % of ``peak``), quickly back
  to just under the limit; within 2 % of it, ``HOLD_EPOCHS`` (2) epochs unchanged; then above it
  by a step that starts at 2 % of ``peak`` and doubles with each epoch without a 429 (2, 4, 8,
  16, 32 %, then 32 % each). A limit that is still there is met again after a 2 % overshoot:
  one 429 per cycle of about 160 answers. A limit that rose is followed up geometrically:
  +90 % in 6 epochs, about 40 s from 300 to 600 rpm.
- **Only a rate in use is raised.** A raise needs the last epoch to have sent at 3/4 of the
  rate at least: when the workers, the CPU or the latency hold the sending back, raising the
  rate would test nothing and only overshoot later.
- **Counted in answers, not seconds.** Epochs are counted in successes, so the controller keeps
  the same pace in requests at every rate (20 answers are 4 s at 300 rpm, 0.2 s at 6,000), and
  an answer to a request sent before the last change says nothing about the new rate.
- **A floor.** The rate never goes below ``FLOOR_FRACTION`` of the configured rpm, so 429s that
  have nothing to do with the rate (a flaky gateway) cannot starve a batch; below that floor
  the shared cooldown still spaces the retries.

Cycling between ``0.9 x`` and ``1.02 x`` the limit, mostly near ``1.0 x``, uses about 95 % of it.
The peer this beats, Inspect AI, only backs off on 429 (retries with exponential backoff) and
never probes back up: a limit that rises is never used. While the adaptive rate applies, the
pacer allows no burst (a server that refuses us may count its limit over a second; real starts
stay 0.9 intervals apart even when a busy loop wakes sleepers late), and a 429 this class
answered never grows the shared cooldown: with a wait under 2 s only the refused request waits
(the cut is the back-off), with a longer one every worker pauses for it.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

__all__ = ["AdaptiveRate"]

BETA = 0.9  # the cut: 10 % under the rate that met a 429
EPOCH = 20  # successes between two raises
FIRST_STEP = 0.02  # the first probe above the peak, as a fraction of it
MAX_STEP = 0.32  # the largest raise per epoch, as a fraction of the peak
HOLD_EPOCHS = 2  # epochs held near the peak before the first probe above it
_NEAR = 0.98  # "near the peak": within 2 % under it
FLOOR_FRACTION = 1 / 16
_METER_S = 10.0  # the send rate is counted over the last 10 s of starts
_METER_MIN_S = 2.0  # ...and only once 2 s of them are there (a burst is not a rate)
_METER_MIN_STARTS = 10
_MIN_COVER_S = 1.0  # a 429 without Retry-After covers the next second's (windows are rarely shorter)
_LONG_WAIT_S = 2.0  # a wait this long says a window is full (1 s is often a rounded-up crumb)
_NOT_BINDING = 0.75  # sending under 3/4 of the pacing rate: the rate is not what limits it
_USED = 0.75  # a raise needs the last epoch to have sent at 3/4 of the rate at least


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
        self._covered_until = -math.inf
        self._successes = 0
        self._step = FIRST_STEP
        self._hold = HOLD_EPOCHS
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
        if len(recent) < _METER_MIN_STARTS or now - recent[0] < _METER_MIN_S:
            return None  # too few, or too short a time, to call it a rate
        return len(recent) * 60.0 / (now - recent[0])

    def limited(self, started_at: float, now: float, pacing_rate: float | None,
                resumed_at: float = -math.inf, retry_after: float | None = None) -> bool:
        """A 429 answered a request started at ``started_at``; returns whether the rate was cut.

        ``pacing_rate`` is the rate the pacer was pacing at (``None``: unpaced), ``resumed_at``
        when its last pause ended (the send rate is counted after it), ``retry_after`` the
        server's wait in seconds if it said one.
        """
        if self.covers(started_at):
            self._successes = 0  # the same overshoot: no raise until an epoch is clean of it
            return False
        floor = self.ceiling * FLOOR_FRACTION
        if self.rate is not None and self.rate <= floor:
            return False  # nothing left to cut: the pacer's cooldown handles the storm
        sent = self.sent_rate(now, resumed_at)
        if pacing_rate and sent and sent > _NOT_BINDING * pacing_rate:
            sent = None  # sending about at the pacing rate: the count is noise, the rate is known
        current = [r for r in (pacing_rate, sent) if r]
        if not current:
            return False
        cut = BETA * min(current)
        wait = retry_after if retry_after is not None and retry_after >= _LONG_WAIT_S else 0.0
        admitted = self._admitted_rate(now, resumed_at, wait)
        cut = min(cut, admitted) if admitted else cut
        self.peak = cut / BETA  # where the limit was met: recovery heads back towards it
        self.rate = max(floor, cut)
        self.cuts += 1
        self._cut_at = self._changed_at = now
        # The server's window still holds the excess for about its wait: 429s for requests
        # sent until then belong to this overshoot too (one cut per window, as TCP's per RTT).
        self._covered_until = now + max(_MIN_COVER_S, retry_after or 0.0)
        self._successes = 0
        self._step = FIRST_STEP
        self._hold = HOLD_EPOCHS
        return True

    def _admitted_rate(self, now: float, resumed_at: float, wait: float) -> float | None:
        """What the server let through: the successes since the last cut or pause (at most the
        last minute), spread over that time plus ``wait``; ``None``: too few to say."""
        since = max(resumed_at, now - 60.0, self._first_start, self._cut_at)
        answers = self._answers
        while answers and answers[0] < now - 60.0:
            answers.popleft()
        admitted = len(answers) - bisect.bisect_left(answers, since)
        if admitted < _METER_MIN_STARTS or now - since < _MIN_COVER_S:
            return None
        return admitted * 60.0 / (now - since + wait)

    def covers(self, started_at: float) -> bool:
        """Whether a 429 for a request started at ``started_at`` is part of an overshoot already
        cut for: sent before the last cut, or before the server's window could drain after it."""
        return started_at < self._covered_until

    def succeeded(self, started_at: float, now: float) -> bool:
        """A 2xx answered a request started at ``started_at``: after ``EPOCH`` of them, raise.
        Returns whether the rate changed."""
        self._answers.append(now)
        rate = self.rate
        if rate is None or started_at < max(self._changed_at, self._covered_until):
            return False  # sent before the last change, or while the server held the overshoot
        self._successes += 1
        if self._successes < EPOCH:
            return False
        begun = max(self._changed_at, self._covered_until)
        sent = len(self._starts) - bisect.bisect_left(self._starts, begun)
        if now > begun and sent * 60.0 / (now - begun) < _USED * rate:
            self._successes = 0  # the rate is not what holds the sending back: raising it tests nothing
            return False
        if rate < _NEAR * self.peak:
            rate = min(self.peak, rate + max((self.peak - rate) / 2, FIRST_STEP * self.peak))
        elif self._hold > 0:
            self._hold -= 1  # just under where the last 429 came: stay a while before probing
        else:
            rate += self._step * self.peak
            self._step = min(MAX_STEP, self._step * 2)
        rate = min(rate, self.ceiling)
        changed, self.rate = rate != self.rate, rate
        self._changed_at, self._successes = now, 0
        return changed

    def describe(self) -> str:
        """A few words for ``RatePacer.describe``, e.g. ``"adaptive 270 after 3 × 429"``."""
        if self.rate is None:
            return ""
        return f"adaptive {self.rate:.0f} after {self.cuts} × 429"
