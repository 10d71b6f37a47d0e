"""Per-call controls carried by the calling task: force refresh, the retry seed, a debug trace.

minima-llm's context helpers, with the same names and meanings. Each is a ``contextvars``
variable, so a value set in one asyncio task (or thread) never leaks into another; code that hands
work to minima_nb's loop thread copies the caller's context along with it.

- ``set_force_refresh(True)`` asks adapters whose call signature cannot carry the flag (the DSPy
  LM) to skip cache reads. ``OpenAIMinimaLlm.generate`` itself takes ``force_refresh=`` and, as in
  minima-llm, does not read this variable.
- ``set_retry_seed(n)`` (``n > 0``) is the ``seed`` a forced refresh sends, so a retry after a
  parse failure asks for a different sample; ``0`` (the default) lets the backend choose.
- ``set_last_cached`` / ``get_last_cached`` record whether the last answer came from the cache,
  for callers whose return value hides ``.cached``.
- ``set_debug_trace(True)`` turns on the request/response trace for the calling task (as does
  ``MINIMA_DEBUG=1`` for the whole process): each request body sent and the answer received
  (or the failure) is printed to stderr. Bodies never hold the API key (it travels in a header).

``retry_temperature(attempt, max_temp, halflife)`` is the temperature ramp a forced refresh uses
when the request asked for none (or 0): it rises with each attempt toward ``max_temp``.
"""

from __future__ import annotations

import contextvars
import sys

from .environment import debug_trace_from_env

__all__ = [
    "debug_trace_enabled", "get_force_refresh", "get_last_cached", "get_retry_seed",
    "reset_debug_trace", "reset_force_refresh", "reset_retry_seed", "retry_temperature",
    "set_debug_trace", "set_force_refresh", "set_last_cached", "set_retry_seed", "trace_exchange",
]

_force_refresh: contextvars.ContextVar[bool] = contextvars.ContextVar("force_refresh", default=False)
_last_cached: contextvars.ContextVar[bool] = contextvars.ContextVar("last_cached", default=False)
_retry_seed: contextvars.ContextVar[int] = contextvars.ContextVar("retry_seed", default=0)
_debug_trace: contextvars.ContextVar[bool] = contextvars.ContextVar("minima_debug_trace", default=False)
_DEBUG_FROM_ENV = debug_trace_from_env()  # read once: MINIMA_DEBUG is a process-wide switch


def set_force_refresh(force_refresh: bool) -> contextvars.Token[bool]:
    """Ask adapters to skip cache reads in this task; returns a token for :func:`reset_force_refresh`."""
    return _force_refresh.set(bool(force_refresh))


def get_force_refresh() -> bool:
    """Whether this task asked for a forced refresh."""
    return _force_refresh.get()


def reset_force_refresh(token: contextvars.Token[bool]) -> None:
    """Undo the :func:`set_force_refresh` that returned ``token``."""
    _force_refresh.reset(token)


def set_retry_seed(seed: int) -> contextvars.Token[int]:
    """The seed a forced refresh in this task sends (``0``: the backend's own choice)."""
    return _retry_seed.set(int(seed))


def get_retry_seed() -> int:
    """This task's retry seed (``0`` when none was set)."""
    return _retry_seed.get()


def reset_retry_seed(token: contextvars.Token[int]) -> None:
    """Undo the :func:`set_retry_seed` that returned ``token``."""
    _retry_seed.reset(token)


def set_last_cached(cached: bool) -> None:
    """Record whether this task's last answer came from the cache."""
    _last_cached.set(bool(cached))


def get_last_cached() -> bool:
    """Whether this task's last answer came from the cache (``False`` before any)."""
    return _last_cached.get()


def set_debug_trace(enabled: bool) -> contextvars.Token[bool]:
    """Trace every request and response of this task; returns a token for :func:`reset_debug_trace`."""
    return _debug_trace.set(bool(enabled))


def reset_debug_trace(token: contextvars.Token[bool]) -> None:
    """Undo the :func:`set_debug_trace` that returned ``token``."""
    _debug_trace.reset(token)


def debug_trace_enabled() -> bool:
    """True when this task asked for a trace with :func:`set_debug_trace`, or ``MINIMA_DEBUG`` is set."""
    return _debug_trace.get() or _DEBUG_FROM_ENV


def trace_exchange(request_id: str, sent: bytes, received: str) -> None:
    """Print one traced exchange to stderr: the request body as sent, then what came back."""
    print(f"TRACE {request_id}:\n - payload: {sent.decode('utf-8', 'replace')}\n - response: {received}",
          file=sys.stderr)


def retry_temperature(attempt: int, max_temp: float, halflife: float) -> float:
    """``max_temp * attempt / (attempt + halflife)``: 0 at attempt 0, rising toward ``max_temp``.

    ``0.0`` when ``attempt <= 0`` or ``max_temp <= 0``. With ``max_temp=0.5, halflife=5``, attempts
    1, 2, 3 give 0.083, 0.143, 0.1875.
    """
    if attempt <= 0 or max_temp <= 0:
        return 0.0
    return max_temp * attempt / (attempt + halflife)
