"""Retry policy: which failed answers are worth another try, and how long to wait before it.

What is retried, and why:

- **429** (rate limited): the server asks us to come back later; its ``Retry-After`` (or
  ``retry-after-ms``) is honoured, capped at ``max_retry_after_s``. A 429 whose body says
  ``insufficient_quota`` is *not* a rate limit: the account is out of credit, every request will
  fail the same way until someone pays, so it becomes a non-retryable :class:`AuthError`.
- **5xx** (500, 502, 503, 504 and any other 5xx) and **408, 409, 425**: transient trouble on the
  server or on the way to it; retried with exponential backoff
  ``min(max_backoff_s, base_backoff_s * 2**(attempt-1))`` with +-``jitter``.
- Transport failures (connection dropped, timeout) are retryable too; their errors come from the
  transport already classified.

Never retried: **400, 404, 413, 422** and other 4xx (the request itself is wrong: retrying sends
the same wrong request), **401, 403** and exhausted quota (the key or the account is wrong:
retrying only burns time and the failure budget).

429 and 503 are *overload* signals (:meth:`RetryPolicy.is_overload`): the backend passes the delay
to the pacer's shared cooldown, which every worker then waits out in ``acquire()``, instead of
sleeping it as well (the same signal must not be waited twice).

Messages never carry credentials: bearer tokens and key-shaped strings are masked.
"""

from __future__ import annotations

import email.utils
import json
import math
import random
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timezone
from typing import Any

from ..config import MinimaLlmConfig
from ..errors import AuthError, CallError, ClientError, ConfigError, RateLimited, ServerError

__all__ = [
    "FATAL_STATUSES",
    "RETRYABLE_STATUSES",
    "RetryPolicy",
    "classify_status",
    "is_quota_exhausted",
]

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
FATAL_STATUSES = frozenset({400, 401, 403, 404, 413, 422})  # fail at once
OVERLOAD_STATUSES = frozenset({429, 503})

_SERVER_MESSAGE_CHARS = 300
_QUOTA_CODE = "insufficient_quota"
_SECRET_HEADERS = ("authorization", "proxy-authorization", "api-key", "x-api-key")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',;]+")
_KEY_SHAPED = re.compile(r"\b(sk|gsk|xai|pk|rk)[-_][A-Za-z0-9_\-*.]{6,}")
_SECONDS = re.compile(r"\d+(?:\.\d*)?|\.\d+")


# -- classification ---------------------------------------------------------------------------


def is_quota_exhausted(body: bytes | str | None) -> bool:
    """True when a (429) body says ``insufficient_quota`` as ``error.code`` or ``error.type``.

    Bodies that are not JSON are searched for the word, so a proxy's rewrapping still counts.
    """
    text = _text(body)
    if not text:
        return False
    error = _error_object(text)
    if isinstance(error, Mapping):
        return _QUOTA_CODE in (error.get("code"), error.get("type"))
    return _QUOTA_CODE in text


def classify_status(status: int, body: bytes | str | None, headers: Mapping[str, str] | None) -> CallError:
    """Turn a non-2xx answer into the error of ``errors.py`` that says what happened and what to do.

    The message includes the status and the server's ``error.message`` (first 300 characters),
    with anything credential-shaped masked.
    """
    lowered = _lower_keys(headers)
    said = _server_message(body, lowered)
    suffix = f": {said}" if said else ""
    if status in (429, 403, 402) and is_quota_exhausted(body):
        return AuthError(
            f"HTTP {status}: the account's quota is exhausted (insufficient_quota); "
            f"check the plan and billing with the provider{suffix}",
            status=status,
        )
    if status == 429:
        retry_after = retry_after_seconds(lowered)
        hint = f" (server asks to retry after {retry_after:g}s)" if retry_after is not None else ""
        return RateLimited(f"HTTP 429 rate limited{hint}{suffix}", status=status, retry_after=retry_after)
    if status in (401, 403):
        return AuthError(
            f"HTTP {status}: the server refused the credentials; check OPENAI_API_KEY "
            f"(set, current, and meant for this base_url and model){suffix}",
            status=status,
        )
    if status >= 500 or status in (408, 409, 425):
        return ServerError(f"HTTP {status} from the server{suffix}", status=status)
    if 400 <= status < 500:
        return ClientError(f"HTTP {status}: the server rejected the request{suffix}", status=status)
    return ClientError(f"unexpected HTTP status {status}{suffix}", status=status)


def retry_after_seconds(headers: Mapping[str, str] | None, now_epoch: float | None = None) -> float | None:
    """The server's requested wait: ``retry-after-ms`` if valid, else ``Retry-After`` (seconds or HTTP-date)."""
    lowered = _lower_keys(headers)
    millis = _plain_seconds(lowered.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    value = lowered.get("retry-after")
    seconds = _plain_seconds(value)
    if seconds is not None:
        return seconds
    return _http_date_seconds(value, now_epoch)


def _plain_seconds(value: str | None) -> float | None:
    if value is None:
        return None
    text = str(value).strip()
    return float(text) if _SECONDS.fullmatch(text) else None


def _http_date_seconds(value: str | None, now_epoch: float | None) -> float | None:
    if not value or not any(ch.isalpha() for ch in value):
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    now = time.time() if now_epoch is None else now_epoch
    return max(0.0, moment.timestamp() - now)


def _text(body: bytes | str | None) -> str:
    if body is None:
        return ""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body).decode("utf-8", errors="replace")
    return str(body)


def _error_object(text: str) -> Any:
    """The ``error`` member of a JSON body (a dict or a string), or ``None``."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    if isinstance(parsed, Mapping):
        return parsed.get("error", parsed if "message" in parsed else None)
    return None


def _server_message(body: bytes | str | None, lowered_headers: Mapping[str, str]) -> str:
    text = _text(body).strip()
    if not text:
        return ""
    error = _error_object(text)
    if isinstance(error, Mapping):
        message = error.get("message")
        message = message if isinstance(message, str) else json.dumps(error)[:_SERVER_MESSAGE_CHARS]
    elif isinstance(error, str):
        message = error
    elif text.startswith(("{", "[", "<")):
        return ""  # JSON without a message, or an HTML error page: nothing readable to quote
    else:
        message = text
    return _mask(" ".join(message.split())[:_SERVER_MESSAGE_CHARS], lowered_headers)


def _mask(text: str, lowered_headers: Mapping[str, str]) -> str:
    """Remove credentials from text the server sent back (some servers echo the key)."""
    secrets = []
    for name in _SECRET_HEADERS:
        value = lowered_headers.get(name, "")
        secrets += [value, value.split()[-1] if value.split() else ""]
    return redact(text, secrets)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without credentials: each of ``secrets`` (4 characters or more), bearer and
    basic tokens, and key-shaped strings (``sk-...``), each replaced by ``[redacted]``."""
    for secret in set(secrets):
        if len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    text = _BEARER.sub(lambda m: f"{m.group(1)} [redacted]", text)
    return _KEY_SHAPED.sub(lambda m: f"{m.group(1)}-[redacted]", text)


def _lower_keys(headers: Mapping[str, str] | None) -> dict[str, str]:
    try:
        return {str(k).lower(): str(v) for k, v in (headers or {}).items()}
    except Exception:  # an odd mapping type must not hide the status itself
        return {}


# -- policy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts, and how long to wait between them. ``max_attempts=0`` retries forever."""

    max_attempts: int = 6
    base_backoff_s: float = 0.5
    max_backoff_s: float = 20.0
    jitter: float = 0.2
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 0:
            raise ConfigError(f"max_attempts={self.max_attempts} must be >= 0; 0 retries forever.")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"jitter={self.jitter} must be between 0 and 1.")
        if self.base_backoff_s < 0 or self.max_backoff_s < 0 or self.max_retry_after_s < 0:
            raise ConfigError("base_backoff_s, max_backoff_s and max_retry_after_s must be >= 0.")

    @classmethod
    def from_config(cls, config: MinimaLlmConfig) -> RetryPolicy:
        """The policy a config describes."""
        return cls(
            max_attempts=config.max_attempts,
            base_backoff_s=config.base_backoff_s,
            max_backoff_s=config.max_backoff_s,
            jitter=config.jitter,
            max_retry_after_s=config.max_retry_after_s,
        )

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether to try again after ``attempt`` attempts (1-based) ended in ``error``."""
        if not getattr(error, "retryable", False):
            return False
        return self.max_attempts == 0 or attempt < self.max_attempts

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """``min(max_backoff_s, base_backoff_s * 2**(attempt-1))``, times ``1 +- jitter``."""
        exponent = min(max(attempt, 1) - 1, 64)  # past 2**64 only the cap matters; avoids overflow
        capped = min(self.max_backoff_s, self.base_backoff_s * 2.0**exponent)
        spread = (rng or random).uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        return max(0.0, capped * (1.0 + spread))

    def delay(self, error: BaseException, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next attempt.

        A 429 with a Retry-After waits that long, capped at ``max_retry_after_s``, plus at most
        ``jitter`` of it (and at most 1 s) so that workers do not all return at the same instant;
        never more than the cap. Anything else waits :meth:`backoff`.
        """
        retry_after = getattr(error, "retry_after", None)
        if isinstance(error, RateLimited) and retry_after is not None and math.isfinite(retry_after):
            wanted = min(max(0.0, retry_after), self.max_retry_after_s)
            extra = (rng or random).uniform(0.0, min(1.0, self.jitter * wanted)) if self.jitter else 0.0
            return min(wanted + extra, self.max_retry_after_s)
        return self.backoff(attempt, rng)

    def is_overload(self, error: BaseException) -> bool:
        """429 (not quota) and 503: the signals that start the pacer's shared cooldown."""
        if isinstance(error, RateLimited):
            return True
        return isinstance(error, ServerError) and getattr(error, "status", None) in OVERLOAD_STATUSES
