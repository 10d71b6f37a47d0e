"""``RpmGate`` and ``Cooldown``: minima-llm's pacing classes, as faces over :class:`RatePacer`.

minima-llm's backend used one of each; minima_nb's pacer does both jobs (a rate with a small
burst, and a shared cooldown after overloads). These faces keep minima-llm's constructors and
methods for code that drove them by hand: ``await gate.wait_turn()``,
``gate.update_from_rate_limit(info)``, ``await cooldown.bump(s)``, ``await cooldown.wait_if_needed()``.
They hold no asyncio primitive, so one instance serves several ``asyncio.run`` calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.limits import RateLimitInfo as _Headers
from ..engine.pacer import RatePacer


@dataclass(frozen=True)
class RateLimitInfo:
    """What ``RpmGate.update_from_rate_limit`` reads: a request limit per reset period."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None


class RpmGate:
    """Requests-per-minute gate: starts spaced ``60 / rpm`` seconds apart (``rpm=0``: no limit).

    A limit learned from the server (:meth:`update_from_rate_limit`) can only lower the rate,
    as in minima-llm.
    """

    def __init__(self, rpm: int) -> None:
        self._configured_rpm = rpm
        self._server_rpm: float | None = None
        self._pacer = RatePacer(max(0, int(rpm)), burst=1)

    @property
    def effective_rpm(self) -> float:
        """The rate in force: the lower of the configured and the server's (0.0 = unlimited)."""
        if self._configured_rpm <= 0:
            return self._server_rpm or 0.0
        if self._server_rpm is None:
            return float(self._configured_rpm)
        return min(float(self._configured_rpm), self._server_rpm)

    def update_from_rate_limit(self, rate_info: RateLimitInfo) -> float | None:
        """Lower the rate to ``limit_requests / reset_requests_s`` per second (as per minute).

        Returns the new effective rpm when it changed, else ``None``.
        """
        if not (rate_info.limit_requests and rate_info.reset_requests_s):
            return None
        new_rpm = rate_info.limit_requests / rate_info.reset_requests_s * 60.0
        if self._server_rpm is not None and new_rpm >= self._server_rpm:
            return None
        before = self.effective_rpm
        self._server_rpm = new_rpm
        if self.effective_rpm == before:
            return None
        # The pacer reads a server limit as requests per minute; hand it the effective rate.
        self._pacer.observe(_Headers(limit_requests=max(1, int(self.effective_rpm))))
        return self.effective_rpm

    async def wait_turn(self) -> None:
        """Wait until the next request may start."""
        await self._pacer.acquire()


class Cooldown:
    """A shared pause after overloads: ``bump(s)`` pauses every waiter for about ``s`` seconds,
    longer when overloads repeat (up to ``cap_s``), decaying with ``halflife_s``."""

    def __init__(self, floor_s: float, cap_s: float, halflife_s: float) -> None:
        floor = max(0.0, floor_s)
        self._pacer = RatePacer(
            0, cooldown_floor_s=floor, cooldown_cap_s=max(floor, cap_s),
            cooldown_halflife_s=max(1e-6, halflife_s),
        )

    @property
    def remaining_s(self) -> float:
        """Seconds left in the current pause (0.0 when there is none)."""
        return self._pacer.cooldown_remaining()

    async def wait_if_needed(self) -> None:
        """Wait out the current pause, if any."""
        await self._pacer.acquire()

    async def bump(self, suggested_s: float) -> None:
        """Record an overload that suggests waiting ``suggested_s`` seconds."""
        self._pacer.overloaded(suggested_s)
