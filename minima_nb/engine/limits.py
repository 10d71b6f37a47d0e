"""What servers say about their rate limits: ``x-ratelimit-*`` headers and reset durations.

``parse_duration`` reads how long until a limit resets from any form servers send, and
``RateLimitInfo`` what one response's headers say. Both treat headers as untrusted input:
garbage means "not said", never an exception. :mod:`.pacer` acts on what they read.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timezone

__all__ = ["RateLimitInfo", "parse_duration", "parse_retry_after"]

_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_EPOCH_S = 1e9  # a bare number this large is a Unix time, not a delay (1e9 s is 31 years)
_EPOCH_MS = 1e12  # ...and this large, a Unix time in milliseconds


# -- durations --------------------------------------------------------------------------------


def parse_duration(value: str | float | None, now_epoch: float | None = None) -> float | None:
    """Seconds until a reset, from any form servers send; ``None`` for missing or garbage.

    Accepts plain seconds (``"20"``, ``"0.5"``), Go/OpenAI durations (``"1s"``, ``"6m0s"``,
    ``"20ms"``, ``"1h2m3.5s"``), a Unix time in seconds (> 1e9) or milliseconds (> 1e12) and an
    HTTP-date; the last three count from ``now_epoch`` (default: now) and are floored at 0.
    Never raises.
    """
    try:
        return _parse_duration(value, now_epoch)
    except Exception:  # a header is untrusted input: any surprise means "not said"
        return None


def parse_retry_after(value: str | None, now_epoch: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (seconds or HTTP-date); same rules as :func:`parse_duration`."""
    return parse_duration(value, now_epoch)


def _parse_duration(value: str | float | None, now_epoch: float | None) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return _from_number(float(value), now_epoch)
    text = str(value).strip()
    if _NUMBER.fullmatch(text):
        return _from_number(float(text), now_epoch)
    lowered = text.lower()
    if _GO_DURATION.fullmatch(lowered):
        return sum(float(amount) * _UNIT_S[unit] for amount, unit in _GO_PART.findall(lowered))
    return _from_http_date(text, now_epoch)


def _from_number(number: float, now_epoch: float | None) -> float | None:
    if not math.isfinite(number) or number < 0:
        return None
    if number > _EPOCH_MS:
        number /= 1000.0
    if number > _EPOCH_S:
        now = time.time() if now_epoch is None else now_epoch
        return max(0.0, number - now)
    return number


def _from_http_date(text: str, now_epoch: float | None) -> float | None:
    if not text or not any(ch.isalpha() for ch in text):
        return None
    moment = email.utils.parsedate_to_datetime(text)
    if moment is None:
        return None
    if moment.tzinfo is None:  # "-0000" means UTC of unknown origin; HTTP-dates are UTC anyway
        moment = moment.replace(tzinfo=timezone.utc)
    now = time.time() if now_epoch is None else now_epoch
    return max(0.0, moment.timestamp() - now)


def _parse_count(value: str | None) -> int | None:
    if value is None:
        return None
    text = str(value).strip()
    if not _NUMBER.fullmatch(text):
        return None
    return int(float(text))


# -- headers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateLimitInfo:
    """What one response's ``x-ratelimit-*`` headers say; any field may be ``None``.

    ``reset_*_s`` are seconds from the response until the limit resets.
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None

    @classmethod
    def from_headers(
        cls, headers: Mapping[str, str] | None, now_epoch: float | None = None
    ) -> RateLimitInfo | None:
        """Read the six OpenAI rate-limit headers (any case); ``None`` when none is usable."""
        try:
            # Most answers of most servers carry none: one look at the names, all lowered at
            # once, ends here for them (this reads every answer's headers).
            names = (headers or {}).keys()
            try:
                spelled = ",".join(names)
            except TypeError:  # a mapping with names that are not strings
                spelled = ",".join(map(str, names))
            if "x-ratelimit-" not in spelled.lower():
                return None
            lowered = {name: str(v) for name, v in ((str(k).lower(), v) for k, v in (headers or {}).items())
                       if name.startswith("x-ratelimit-")}
        except Exception:  # an odd mapping type must not break a successful answer
            return None
        if not lowered:
            return None
        counts: dict[str, int | None] = {}
        resets: dict[str, float | None] = {}
        for kind in ("requests", "tokens"):
            counts[f"limit_{kind}"] = _parse_count(lowered.get(f"x-ratelimit-limit-{kind}"))
            counts[f"remaining_{kind}"] = _parse_count(lowered.get(f"x-ratelimit-remaining-{kind}"))
            reset = lowered.get(f"x-ratelimit-reset-{kind}")
            resets[f"reset_{kind}_s"] = parse_duration(reset, now_epoch)
        if all(v is None for v in (*counts.values(), *resets.values())):
            return None
        return cls(
            limit_requests=counts["limit_requests"],
            remaining_requests=counts["remaining_requests"],
            reset_requests_s=resets["reset_requests_s"],
            limit_tokens=counts["limit_tokens"],
            remaining_tokens=counts["remaining_tokens"],
            reset_tokens_s=resets["reset_tokens_s"],
        )
