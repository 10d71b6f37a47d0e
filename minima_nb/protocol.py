"""minima-llm's ``minima_llm.protocol`` import path: the request, result and backend types.

Code that imported from the predecessor's module runs with ``minima_nb.protocol``; the types
live in :mod:`minima_nb.types`. Nothing is defined here.
"""

from __future__ import annotations

from .types import (
    AsyncMinimaLlmBackend,
    BatchPendingResponse,
    MinimaLlmFailure,
    MinimaLlmRequest,
    MinimaLlmResponse,
    MinimaLlmResult,
)

__all__ = [
    "AsyncMinimaLlmBackend", "BatchPendingResponse", "MinimaLlmFailure", "MinimaLlmRequest",
    "MinimaLlmResponse", "MinimaLlmResult",
]
