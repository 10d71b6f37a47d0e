"""Request pacing for one backend: the request/token pacer and the shared cooldown.

``RatePacer`` decides when each request may start, from the configured rate and what
:mod:`.limits` read off the server's headers. It never sleeps itself: the clock and the sleep
are injected.

Pacing semantics
----------------
- **Rate.** The effective rate is the configured ``rpm`` (``0`` = unlimited), lowered to the
  server's ``x-ratelimit-limit-requests`` when one is reported. The server's figure is the latest
  one seen, not the lowest: a later response reporting a higher limit raises the rate again.
  Limits are read as per minute.
- **Burst.** Starts follow GCRA (a token bucket in scheduling form): up to ``burst`` requests may
  start at once after an idle spell, then starts are spaced ``60 / rate`` seconds apart, so the
  long-run rate equals the effective rate. Default ``burst = max(1, min(rate // 60, 20))``: one
  second's worth of requests, at least 1, at most 20 (10 at the default 600 rpm).
- **Slowing down before the 429.** While ``x-ratelimit-remaining-requests`` is low (at most 10 % of
  the server's limit, or at most 3) and its reset time lies ahead, starts are spaced at least
  ``time-to-reset / remaining`` apart (no burst), and once as many requests as were remaining have
  started, the next ones wait for the reset. A reported remaining of 0 pauses every start until
  the reset. Once the reset time has passed, the old figures no longer apply: full speed again.
- **No headers, only 429s.** With pacing on (``rpm > 0``) every 429 also teaches the
  :class:`~.adaptive.AdaptiveRate` (AIMD; its docstring has the design), and the rate is the
  lowest of rpm, the stated limit and the adaptive rate, with no burst while the last applies.
- **A stated limit relaxes** after ``RELAX_AFTER`` 2xx answers in a row without rate-limit
  headers: a server that paces by headers sends them on every answer, so a limit seen once on a
  429 (a gateway's, a random fault's) must not hold the batch down for good; the adaptive rate,
  which learned from the same 429, takes over and probes up.
- **Tokens.** When ``x-ratelimit-limit-tokens`` is known, ``acquire(tokens=n)`` also spaces
  starts so that the estimated tokens per minute stay under it (with a burst of up to
  ``TOKEN_BURST_S`` seconds' worth). When the remaining tokens (minus what was started since the
  report) are fewer than ``n``, the request waits for the token reset.
- **Cooldown.** ``overloaded(delay)`` (after a 429 or 503) pauses every start until ``now + delay``,
  or longer when overloads repeat: each overload that arrives after the previous cooldown ended
  doubles a penalty (up to ``cooldown_cap_s``), which halves every ``cooldown_halflife_s`` and
  never goes below ``cooldown_floor_s``. Overloads that arrive during a cooldown come from
  requests started before it; they only extend it to their own ``now + delay``, never add to it.
  The caller must not also sleep ``delay``: ``acquire()`` waits out the cooldown. A 429 the
  adaptive rate answered (a cut, or the overshoot of one) never grows the penalty, and with a
  wait under ``_SHORT_WAIT_S`` pauses only the refused request (the caller sleeps the rest).
- **Pauses slide the queue.** Requests already waiting for a slot when a pause begins keep their
  order and spacing and move back by the pause's length, instead of all starting at once when it
  ends; after a pause the bucket starts empty (no burst) and refills while idle. A changed rate
  re-spaces the booked starts the same way, in order with the pauses.

- **A shared budget.** ``share_budget(gate)`` adds a :class:`PermitGate`: a budget shared with
  other processes (the Dask integration's global RPM). Every start then also waits for a permit
  from the gate, and what the server says (its limits, an overload) is passed on to it, so one
  process's 429 or lowered limit slows every process sharing the budget. The local rules above
  still apply on top: a permit never lets a request start earlier than this pacer would.

No asyncio primitive is held: a reservation is plain arithmetic done before the first ``await``,
so one pacer serves every request of a backend, from several event loops one after another.
Single-threaded use per loop is assumed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from ..errors import ConfigError
from .adaptive import AdaptiveRate
from .limits import RateLimitInfo
from .window import Window, charge

__all__ = ["RELAX_AFTER", "TOKEN_BURST_S", "PermitGate", "RatePacer"]

_LOW_FRACTION = 0.1
_LOW_ABSOLUTE = 3
TOKEN_BURST_S = 6.0  # token pacing lets a tenth of a minute's token budget through at once
_MAX_BURST = 20
_WAKE_TOLERANCE_S = 1e-4  # loops may wake a hair early; do not sleep again for crumbs
_MIN_GAP = 0.9  # least real gap between two starts while the adaptive rate applies, in intervals
_NAP_S = 0.5  # the longest sleep between two looks at the schedule
_SHORT_WAIT_S = 2.0  # a cut 429 asking less than this pauses only the refused request
RELAX_AFTER = 8  # 2xx answers in a row without rate-limit headers that drop a stated limit


# -- the pacer --------------------------------------------------------------------------------


class PermitGate(Protocol):
    """A request budget shared beyond this pacer (e.g. across the workers of a cluster).

    ``permit()`` waits until the shared budget grants one start and returns the earliest time
    (on the pacer's clock) that start may happen; ``observe`` and ``overloaded`` hear what the
    server said to this pacer, so the shared budget can slow down for everyone.
    """

    async def permit(self) -> float: ...

    def observe(self, info: RateLimitInfo) -> None: ...

    def overloaded(self, delay_s: float) -> None: ...


class RatePacer:
    """Paces request starts for one backend.

    Configured RPM (0 = off), lowered or raised by what the server's headers say, with a small
    burst allowed, plus tokens-per-minute pacing when the server reports token limits, plus a
    shared cooldown after overload (429/503). See the module docstring for the exact rules.
    """

    def __init__(
        self,
        rpm: int,
        *,
        burst: int | None = None,
        cooldown_floor_s: float = 0.0,
        cooldown_cap_s: float = 30.0,
        cooldown_halflife_s: float = 20.0,
        adaptive: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rpm < 0:
            raise ConfigError(f"rpm={rpm} must be >= 0; 0 turns pacing off (RPM).")
        if burst is not None and burst < 1:
            raise ConfigError(f"burst={burst} must be at least 1.")
        if cooldown_halflife_s <= 0:
            raise ConfigError(f"cooldown_halflife_s={cooldown_halflife_s} must be > 0 (COOLDOWN_HALFLIFE_S).")
        self._rpm = rpm
        self._burst = burst
        self._floor = cooldown_floor_s
        self._cap = cooldown_cap_s
        self._halflife = cooldown_halflife_s
        self._clock = clock
        self._sleep = sleep
        self._server_rpm: int | None = None
        self._server_tpm: int | None = None
        self._requests: Window | None = None
        self._tokens: Window | None = None
        self._tat = -math.inf  # GCRA "theoretical arrival time" of the next request
        self._token_tat = -math.inf  # the same, counted in token-seconds
        self._last_start = -math.inf
        self._paused_until = -math.inf  # no start before this: cooldown or exhausted limit
        self._cooldown_until = -math.inf  # the overload part of the pause
        # Every move of the booked starts, in order: (anchor, factor, shift). A lowered rate
        # re-spaces starts after the anchor by the factor, a pause slides them all back by the
        # shift; sleepers apply the moves made since their booking, in the same order, on waking.
        self._moves: list[tuple[float, float, float]] = []
        self._penalty = 0.0
        self._penalty_at = 0.0
        self._gate: PermitGate | None = None
        # Learns from 429s only when pacing is on: rpm=0 means "never pace", headers aside.
        self._adaptive = AdaptiveRate(rpm) if adaptive and rpm > 0 else None
        self._headerless = 0  # 2xx answers in a row without rate-limit headers
        self._cut_now = False
        self._sent = -math.inf  # when the last request really started

    def share_budget(self, gate: PermitGate | None) -> None:
        """Also take every start's permit from ``gate`` (None: pace on this pacer alone)."""
        self._gate = gate

    # -- waiting ------------------------------------------------------------------------------

    async def acquire(self, tokens: int = 0) -> float:
        """Wait until this request may start; return the seconds waited.

        Accounts for the request rate, the token rate (when a token limit is known, ``tokens``
        being this request's estimate) and the cooldown.
        """
        began = self._clock()
        gate = self._gate
        if gate is None and not self._rpm and began >= self._paused_until and (  # all None:
                self._adaptive is self._server_rpm is self._server_tpm is self._requests is self._tokens is None):
            self._sent = self._last_start = began  # rpm=0, no limit heard of, no pause: go now
            return 0.0
        # The shared permit first: waiting for it can take a while, and the local booking
        # below must be made at the time the request can really go.
        permitted = await gate.permit() if gate is not None else -math.inf
        start = max(self._reserve(self._clock(), max(0, int(tokens))), permitted)
        seen = len(self._moves)
        while True:
            for anchor, factor, shift in self._moves[seen:]:  # paused or slowed while we slept
                start = _stretched(start, anchor, factor) + shift
            seen = len(self._moves)
            wait = start - self._clock()
            if wait <= _WAKE_TOLERANCE_S and self._adaptive is not None and self._adaptive.rate:
                # Sleepers a busy loop woke late would go out together: under a server that
                # refuses us, keep real starts apart too (0.9 intervals: a little catching up).
                wait = self._sent + _MIN_GAP * self._interval() - self._clock()
                start = self._clock() + wait
            if wait <= _WAKE_TOLERANCE_S:
                self._sent = self._clock()
                if self._adaptive is not None:
                    self._adaptive.started(self._sent)
                return max(0.0, self._sent - began)
            await self._sleep(min(wait, _NAP_S))

    def _reserve(self, now: float, tokens: int) -> float:
        """Pick this request's start time and book it; no await, so no lock is needed."""
        interval = self._interval()
        token_interval = tokens * 60.0 / self._server_tpm if tokens and self._server_tpm else 0.0
        start = max(now, self._paused_until, self._request_gate(now), self._token_gate(now, tokens))
        if interval:
            start = max(start, self._tat - self._tolerance(interval))
            self._tat = max(self._tat, start) + interval
        if token_interval:
            start = max(start, self._token_tat - TOKEN_BURST_S)
            self._token_tat = max(self._token_tat, start) + token_interval
        self._last_start = start
        charge(self._requests, start, 1)
        charge(self._tokens, start, tokens)
        return start

    def _request_gate(self, now: float) -> float:
        """Earliest start the remaining-requests report allows."""
        window = self._requests
        reset_at = window.active_reset(now) if window is not None else None
        if window is None or reset_at is None:
            return now
        if window.budget() <= 0:
            return reset_at
        if self._is_low(window):
            return min(self._last_start + window.spacing(reset_at), reset_at)
        return now

    def _token_gate(self, now: float, tokens: int) -> float:
        """Earliest start the remaining-tokens report allows for a request of ``tokens``."""
        window = self._tokens
        reset_at = window.active_reset(now) if window is not None else None
        if window is None or reset_at is None:
            return now
        return reset_at if window.budget() < max(tokens, 1) else now

    def _is_low(self, window: Window) -> bool:
        return window.remaining <= max(_LOW_ABSOLUTE, _LOW_FRACTION * (self._server_rpm or 0))

    def _rate(self) -> float | None:
        learned = self._adaptive.rate if self._adaptive is not None else None
        limits = [r for r in (self._rpm, self._server_rpm, learned) if r]
        return float(min(limits)) if limits else None

    def _interval(self) -> float:
        rate = self._rate()
        return 60.0 / rate if rate else 0.0

    def _tolerance(self, interval: float) -> float:
        """How far ahead of the even schedule a start may be: (burst - 1) intervals."""
        if self._adaptive is not None and self._adaptive.rate is not None:
            return 0.0  # the server refused us: its window may be a second long, send no burst
        burst = self._burst or max(1, min(int(60.0 / interval) // 60, _MAX_BURST))
        return (burst - 1) * interval

    # -- what the server says -------------------------------------------------------------------

    def observe(self, info: RateLimitInfo | None) -> None:
        """Learn from one response's headers; call it for every response, 2xx included."""
        if info is None:
            return
        if self._gate is not None:
            self._gate.observe(info)
        now = self._clock()
        if info.limit_requests:
            before = self._spacing_now()
            self._server_rpm = info.limit_requests  # the latest word, up or down
            self._respace(now, before)
        if info.limit_tokens:
            self._server_tpm = info.limit_tokens
        if info.remaining_requests is not None:
            self._requests = Window.reported(info.remaining_requests, info.reset_requests_s, now)
        if info.remaining_tokens is not None:
            self._tokens = Window.reported(info.remaining_tokens, info.reset_tokens_s, now)
        for window in (self._requests, self._tokens):
            if window is not None and window.remaining <= 0:
                reset_at = window.active_reset(now)
                if reset_at is not None:
                    self._pause(reset_at, now)

    def answered(self, started_at: float, status: int, *, stated: bool,
                 retry_after: float | None = None) -> None:
        """Learn from one answer's status: ``started_at`` is when its attempt started, ``stated``
        whether it carried rate-limit headers, ``retry_after`` a 429's wait. Call it for every
        answer, before :meth:`observe`."""
        now = self._clock()
        adaptive = self._adaptive
        if status == 429 and adaptive is not None:
            before = self._spacing_now()
            if adaptive.limited(started_at, now, self._rate(), min(now, self._paused_until), retry_after):
                self._respace(now, before)
                self._cut_now = True  # the cut answers this 429 (see overloaded)
            else:
                self._cut_now = adaptive.covers(started_at)  # in flight at the last cut
        if not 200 <= status < 300:
            return
        if adaptive is not None:
            before = self._spacing_now()
            if adaptive.succeeded(started_at, now):
                self._respace(now, before)  # a raised rate starts now, not after the bookings
        self._headerless = 0 if stated else self._headerless + 1
        if self._headerless >= RELAX_AFTER and (self._server_rpm or self._server_tpm):
            self._server_rpm = self._server_tpm = None  # said once, never confirmed: not a limit

    def overloaded(self, delay_s: float) -> float:
        """Record a 429/503; return when the refused request may go again (at least ``now + delay_s``).

        Every start pauses until then (``delay_s`` is the caller's intended wait, a capped
        Retry-After or its backoff; the caller waits in :meth:`acquire`, not on top of it). But
        when the adaptive rate already answered this 429 (it cut the rate for it, or for the
        overshoot it was part of) and the wait is short, only the refused request waits: the
        caller sleeps until the returned time beyond the pause (:meth:`cooldown_remaining`).
        """
        now = self._clock()
        delay = delay_s if delay_s > 0 else 0.0  # also turns NaN into 0
        if self._gate is not None:
            self._gate.overloaded(delay)
        answered, self._cut_now = self._cut_now, False
        if answered and delay < _SHORT_WAIT_S:
            return now + delay  # a probe met the limit; the slower rate is the back-off
        if answered or now < self._cooldown_until:
            # A long wait after a cut, or the same overload reported by other requests that
            # started before the pause: extend the pause to this wait, never add to it.
            end = max(self._cooldown_until, now + delay)
        else:
            grown = 2.0 * self._decayed_penalty(now)
            self._penalty = min(self._cap, max(self._floor, delay, grown))
            self._penalty_at = now
            end = now + max(delay, self._penalty)
        self._cooldown_until = end
        self._pause(end, now)
        return end

    def _pause(self, until: float, now: float) -> None:
        """No start before ``until``; slide every booked start back by the added pause."""
        begin = max(now, self._paused_until)
        if until <= begin:
            return
        shift = until - begin
        self._moves.append((-math.inf, 1.0, shift))
        interval = self._interval()
        # After the pause the bucket starts empty: even spacing first, burst credit refills later.
        resume = until + (self._tolerance(interval) if interval else 0.0)
        self._tat = max(max(self._tat, now) + shift, resume)
        if self._token_tat > now:
            self._token_tat += shift
        if self._last_start > now:
            self._last_start += shift
        self._paused_until = until

    def _spacing_now(self) -> tuple[float, float]:
        """(interval, burst tolerance) of the current rate; (0, 0) when unpaced."""
        interval = self._interval()
        return interval, self._tolerance(interval) if interval else 0.0

    def _respace(self, anchor: float, before: tuple[float, float]) -> None:
        """Re-space every start booked after ``anchor`` when the rate changed from ``before``.

        Up to 64 workers may hold starts booked at the old spacing, several seconds ahead; kept
        as they were, the old rate would go on until the last of them (a second half of 492 rpm
        against a limit lowered to 300, before this; a raised adaptive rate tested seconds late).
        The GCRA clock runs one interval and one burst tolerance past the last booking: it is
        moved as that booking is, then given the new interval and tolerance, so the new bookings
        follow the re-spaced ones without a gap. Sleepers nap at most ``_NAP_S`` so that they
        see a move to an earlier start in time.
        """
        (old, old_tolerance), (new, new_tolerance) = before, self._spacing_now()
        if not old or not new or new == old:
            return
        factor = new / old
        self._moves.append((anchor, factor, 0.0))
        if self._tat > anchor:
            self._tat = _stretched(self._tat - old - old_tolerance, anchor, factor) + new + new_tolerance
        self._last_start = _stretched(self._last_start, anchor, factor)

    def _decayed_penalty(self, now: float) -> float:
        return self._penalty * 0.5 ** (max(0.0, now - self._penalty_at) / self._halflife)

    # -- reporting ------------------------------------------------------------------------------

    def cooldown_remaining(self) -> float:
        """Seconds until requests may start again after a cooldown or an exhausted limit; 0 if none."""
        return max(0.0, self._paused_until - self._clock())

    @property
    def cooldown_penalty_s(self) -> float:
        """The cooldown a new overload would start from, decayed since the last one."""
        return max(self._floor, self._decayed_penalty(self._clock())) if self._penalty else self._floor

    @property
    def effective_rpm(self) -> float | None:
        """The current pacing rate in requests per minute; ``None`` means unlimited."""
        rate = self._rate() or math.inf
        window = self._requests
        reset_at = window.active_reset(self._clock()) if window is not None else None
        if window is not None and reset_at is not None and self._is_low(window):
            spacing = window.spacing(reset_at)
            rate = min(rate, 60.0 / spacing) if spacing > 0 else rate
        return None if math.isinf(rate) else rate

    def describe(self) -> str:
        """One line, e.g. ``"500 rpm (configured 600, server limit 500, 12 remaining, resets in 3.2s)"``."""
        now = self._clock()
        rate = self.effective_rpm
        head = f"{rate:.0f} rpm" if rate is not None else "unpaced"
        details = [f"configured {self._rpm}" if self._rpm else "configured unlimited"]
        if self._server_rpm:
            details.append(f"server limit {self._server_rpm}")
        if self._adaptive is not None and self._adaptive.rate is not None:
            details.append(self._adaptive.describe())
        requests, tokens = self._requests, self._tokens
        if requests is not None and (reset_at := requests.active_reset(now)) is not None:
            details.append(requests.text(reset_at, now))
        if self._server_tpm:
            details.append(f"token limit {self._server_tpm}/min")
        if tokens is not None and (reset_at := tokens.active_reset(now)) is not None:
            details.append(tokens.text(reset_at, now, "tokens "))
        pause = self.cooldown_remaining()
        if pause > 0:
            details.append(f"paused {pause:.1f}s")
        return f"{head} ({', '.join(details)})"


def _stretched(start: float, anchor: float, factor: float) -> float:
    return anchor + (start - anchor) * factor if start > anchor and factor != 1.0 else start
