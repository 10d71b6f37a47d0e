"""A request that failed for good, as the matching member of DSPy's ``LMError`` family.

DSPy programs catch ``dspy.LMRateLimitError``, ``dspy.LMAuthError``... and DSPy passes its own
public errors through its engine boundary unchanged, so the engines raise these directly, with
minima_nb's message (which says what failed, after how many attempts, and never holds the key).
minima_nb has already retried what was worth retrying: DSPy's own retries are off.
"""

from __future__ import annotations

from typing import Any

import dspy

from ...types import MinimaLlmFailure

__all__ = ["PROVIDER", "lm_error"]

PROVIDER = "minima_nb"

# minima_nb error class name -> DSPy error class (the names are minima_nb.errors'; see errors.py).
_BY_TYPE: dict[str, Any] = {
    "AuthError": dspy.LMAuthError,
    "RateLimited": dspy.LMRateLimitError,
    "RequestTimeout": dspy.LMTimeoutError,
    "ServerError": dspy.LMServerError,
    "ClientError": dspy.LMInvalidRequestError,
    "ConnectError": dspy.LMTransportError,
    "TransportError": dspy.LMTransportError,
    "ResponseError": dspy.LMProviderError,
    "StatusError": dspy.LMProviderError,
}


def lm_error(failure: MinimaLlmFailure, model: str) -> Exception:
    """The DSPy error for ``failure``: its class by minima_nb's error type, minima_nb's message."""
    cls = _BY_TYPE.get(failure.error_type, dspy.LMProviderError)
    if failure.error_type == "AuthError" and failure.status == 429:
        cls = dspy.LMBillingError  # an exhausted quota: minima_nb stops the batch like a bad key
    if failure.error_type == "ClientError" and failure.status == 404:
        cls = dspy.LMUnsupportedModelError
    tries = f" (after {failure.attempts} attempt{'s' if failure.attempts != 1 else ''})"
    message = f"{failure.error_type}: {failure.message}{tries if failure.attempts else ''}"
    error: Exception = cls(message, model=model, provider=PROVIDER, status=failure.status)
    error.minima_failure = failure  # type: ignore[attr-defined]  # for callers that want minima's view
    return error
