"""The error tree. Every error minima_nb raises is one of these:

    MinimaError
    ├── ConfigError (also ValueError)     bad or missing settings, with the fix in the message
    ├── CacheError                        unreadable/locked/newer-schema cache file
    ├── CallError                         one request failed for good (.status, .attempts)
    │   ├── TransportError                the request never got an HTTP answer
    │   │   ├── ConnectError              could not connect, or the connection dropped
    │   │   └── RequestTimeout            no complete answer within the timeout
    │   ├── StatusError                   the server answered with a non-2xx status
    │   │   ├── RateLimited               429 (.retry_after seconds, if the server said)
    │   │   ├── ServerError               5xx
    │   │   ├── ClientError               other 4xx
    │   │   └── AuthError                 401, 403, or an exhausted quota
    │   └── ResponseError                 2xx but an unusable body (bad JSON, null content)
    └── BatchAborted                      failure budget exceeded; carries the partial results

Errors are translated at the transport boundary: nothing above it sees aiohttp or httpx types.
All of them pickle (Dask ships them between processes), so every constructor argument is kept
in ``self.args`` order by ``__reduce__``.
"""

from __future__ import annotations

from typing import Any


class MinimaError(Exception):
    """Base of every error raised by minima_nb."""


class ConfigError(MinimaError, ValueError):
    """A setting is missing or invalid; the message names it and says how to fix it."""


class CacheError(MinimaError):
    """The prompt cache file cannot be used (not a cache, newer schema, unwritable...)."""


class CallError(MinimaError):
    """One request failed for good.

    ``status`` is the HTTP status when there was one; ``attempts`` how many tries were made;
    ``retryable`` whether the retry policy would try this kind of error again;
    ``body_snippet`` the start of the last answer's body (the API key masked) and
    ``attempt_timestamps`` when each attempt started (monotonic seconds), when known.
    """

    retryable = False
    body_snippet: str | None = None
    attempt_timestamps: tuple[float, ...] = ()

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.attempts = attempts

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[CallError], message: str, state: dict[str, Any]) -> CallError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class TransportError(CallError):
    """No HTTP answer was received."""

    retryable = True


class ConnectError(TransportError):
    """Could not connect, or the connection dropped before the answer was complete."""


class RequestTimeout(TransportError):
    """No complete answer arrived within the per-request timeout."""


class StatusError(CallError):
    """The server answered with a non-2xx status."""


class RateLimited(StatusError):
    """HTTP 429. ``retry_after`` is the server's Retry-After in seconds, if it sent one."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 429,
        attempts: int = 1,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, attempts=attempts)
        self.retry_after = retry_after


class ServerError(StatusError):
    """HTTP 5xx (and the retryable 4xx: 408, 409, 425)."""

    retryable = True


class ClientError(StatusError):
    """A 4xx that retrying will not fix (400, 404, 413, 422...)."""


class AuthError(ClientError):
    """401, 403, or an exhausted quota: every request would fail the same way."""


class ResponseError(CallError):
    """A 2xx answer whose body is unusable: not JSON, no choices, or null content.

    Retried (within ``max_attempts``): a truncated or garbled body is usually a proxy's or an
    overloaded server's passing fault, and a null content is never cached as an answer.
    """

    retryable = True


class BatchAborted(MinimaError, RuntimeError):
    """The batch stopped early: too many failures, or an error every row would hit.

    Also a ``RuntimeError``, which is what minima-llm raised and what its users catch.

    ``results`` holds one slot per input: a response or failure where the row finished,
    ``None`` where it never ran. Everything answered is already in the cache.
    """

    # Set only by the notebook layer (``df.minima.generate``): the details DataFrame of what
    # finished. Declared, not defaulted: an error raised elsewhere has no such attribute.
    partial: Any

    def __init__(self, message: str, results: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.results = list(results or [])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.results))

    def __str__(self) -> str:
        return self.message
