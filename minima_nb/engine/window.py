"""The server's last word on one limit: how many requests (or tokens) remain until its reset.

:mod:`.pacer` keeps one :class:`Window` for requests and one for tokens from the
``x-ratelimit-remaining-*`` / ``-reset-*`` headers, counts what it started since, and slows down
or waits for the reset from them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Window", "charge"]


@dataclass
class Window:
    """``remaining`` until ``reset_at`` (pacer clock time), as reported at ``observed_at``."""

    remaining: int
    reset_at: float | None
    observed_at: float
    used: int = 0  # requests (or tokens) we started since, before reset_at

    @classmethod
    def reported(cls, remaining: int, reset_s: float | None, now: float) -> Window:
        """The window a response reports at ``now``: ``remaining`` left, reset in ``reset_s``."""
        return cls(remaining=remaining, reset_at=None if reset_s is None else now + reset_s, observed_at=now)

    def active_reset(self, now: float) -> float | None:
        """``reset_at`` while this report still applies (``now`` before it), else ``None``."""
        return self.reset_at if self.reset_at is not None and now < self.reset_at else None

    def budget(self) -> int:
        """What remains after the starts charged since the report."""
        return self.remaining - self.used

    def spacing(self, reset_at: float) -> float:
        """Even spacing that spreads what remains over the time to the reset (``reset_at``)."""
        return (reset_at - self.observed_at) / max(self.remaining, 1)

    def text(self, reset_at: float, now: float, what: str = "") -> str:
        """E.g. ``"12 remaining, resets in 3.2s"``."""
        return f"{self.budget()} {what}remaining, resets in {reset_at - now:.1f}s"


def charge(window: Window | None, start: float, amount: int) -> None:
    """Count ``amount`` started at ``start`` against ``window`` if it is still the one that applies."""
    if window is not None and amount and (window.reset_at is None or start < window.reset_at):
        window.used += amount
