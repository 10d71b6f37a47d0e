"""minima_nb: run thousands of LLM prompts from a notebook, cached, paced, resumable.

Importing the package registers the pandas accessor ``minima`` and loads nothing heavier than
pandas: the engine (asyncio, aiohttp, SQLite) and the Parquet export load when a name that
needs them is first used. No logic lives here beyond that table of names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .config import BatchConfig, MinimaLlmConfig, ParasailBatchConfig
from .controls import (
    get_force_refresh,
    get_last_cached,
    get_retry_seed,
    reset_debug_trace,
    reset_force_refresh,
    reset_retry_seed,
    retry_temperature,
    set_debug_trace,
    set_force_refresh,
    set_last_cached,
    set_retry_seed,
)
from .errors import (
    AuthError,
    BatchAborted,
    BudgetExceeded,
    CacheError,
    CallError,
    ClientError,
    ConfigError,
    ConnectError,
    MinimaError,
    RateLimited,
    RequestTimeout,
    ResponseError,
    SchemaMismatch,
    ServerError,
    StatusError,
    TransportError,
)
from .notebook import accessor as _accessor  # noqa: F401  (registers df.minima)
from .notebook import progress as _progress  # noqa: F401  (the widget bar for progress=True)
from .notebook.session import configure, get_backend
from .types import (
    AsyncMinimaLlmBackend,
    BatchPendingResponse,
    BatchSnapshot,
    MinimaLlmFailure,
    MinimaLlmRequest,
    MinimaLlmResponse,
    MinimaLlmResult,
    Usage,
)

if TYPE_CHECKING:
    from .batch import (
        BatchJob,
        batch_jobs,
        batch_status_overview,
        cancel_all_batches,
        cancel_all_local_batches,
        cancel_batch,
    )
    from .compat import Cooldown, PromptCache, RpmGate
    from .engine.backend import OpenAIMinimaLlm
    from .engine.pool import run_batched_callable
    from .engine.pulse import BackendPulse, BackendStats
    from .engine.sync import run_sync
    from .export import open_cache
    from .servers.proxy import ProxyServer

# Names whose modules load on first use: name -> module (relative to this package).
_LAZY = {
    "BackendPulse": ".engine.pulse",
    "BatchJob": ".batch",
    "batch_jobs": ".batch",
    "batch_status_overview": ".batch",
    "cancel_all_batches": ".batch",
    "cancel_all_local_batches": ".batch",
    "cancel_batch": ".batch",
    "BackendStats": ".engine.pulse",
    "Cooldown": ".compat",
    "PromptCache": ".compat",
    "RpmGate": ".compat",
    "OpenAIMinimaLlm": ".engine.backend",
    "ProxyServer": ".servers.proxy",
    "open_cache": ".export",
    "run_batched_callable": ".engine.pool",
    "run_sync": ".engine.sync",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'minima_nb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AsyncMinimaLlmBackend",
    "AuthError",
    "BackendPulse",
    "BackendStats",
    "BatchAborted",
    "BatchConfig",
    "BatchJob",
    "BatchPendingResponse",
    "BatchSnapshot",
    "BudgetExceeded",
    "CacheError",
    "CallError",
    "ClientError",
    "ConfigError",
    "ConnectError",
    "Cooldown",
    "MinimaError",
    "MinimaLlmConfig",
    "MinimaLlmFailure",
    "MinimaLlmRequest",
    "MinimaLlmResponse",
    "MinimaLlmResult",
    "OpenAIMinimaLlm",
    "ParasailBatchConfig",
    "PromptCache",
    "ProxyServer",
    "RateLimited",
    "RequestTimeout",
    "ResponseError",
    "RpmGate",
    "SchemaMismatch",
    "ServerError",
    "StatusError",
    "TransportError",
    "Usage",
    "__version__",
    "batch_jobs",
    "batch_status_overview",
    "cancel_all_batches",
    "cancel_all_local_batches",
    "cancel_batch",
    "configure",
    "get_backend",
    "get_force_refresh",
    "get_last_cached",
    "get_retry_seed",
    "open_cache",
    "reset_debug_trace",
    "reset_force_refresh",
    "reset_retry_seed",
    "retry_temperature",
    "run_batched_callable",
    "run_sync",
    "set_debug_trace",
    "set_force_refresh",
    "set_last_cached",
    "set_retry_seed",
]
