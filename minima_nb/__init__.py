"""minima_nb: run thousands of LLM prompts from a notebook, cached, paced, resumable.

Importing the package registers the pandas accessor ``minima``. No logic lives here.
"""

from . import accessor as _accessor  # noqa: F401  (registers df.minima)
from ._version import __version__
from .backend import OpenAIMinimaLlm
from .batch import run_batched_callable
from .config import BatchConfig, MinimaLlmConfig, ParasailBatchConfig
from .errors import (
    AuthError,
    BatchAborted,
    CacheError,
    CallError,
    ClientError,
    ConfigError,
    ConnectError,
    MinimaError,
    RateLimited,
    RequestTimeout,
    ResponseError,
    ServerError,
    StatusError,
    TransportError,
)
from .export import open_cache
from .runner import run_sync
from .session import configure, get_backend
from .types import (
    AsyncMinimaLlmBackend,
    BatchSnapshot,
    MinimaLlmFailure,
    MinimaLlmRequest,
    MinimaLlmResponse,
    Usage,
)

__all__ = [
    "AsyncMinimaLlmBackend",
    "AuthError",
    "BatchAborted",
    "BatchConfig",
    "BatchSnapshot",
    "CacheError",
    "CallError",
    "ClientError",
    "ConfigError",
    "ConnectError",
    "MinimaError",
    "MinimaLlmConfig",
    "MinimaLlmFailure",
    "MinimaLlmRequest",
    "MinimaLlmResponse",
    "OpenAIMinimaLlm",
    "ParasailBatchConfig",
    "RateLimited",
    "RequestTimeout",
    "ResponseError",
    "ServerError",
    "StatusError",
    "TransportError",
    "Usage",
    "__version__",
    "configure",
    "get_backend",
    "open_cache",
    "run_batched_callable",
    "run_sync",
]
