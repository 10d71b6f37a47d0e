"""minima-llm's ``minima_llm.backend`` import path: its public names, from where they live now.

Code that imported from the predecessor's module (``from minima_llm.backend import RpmGate``)
runs with ``minima_nb.backend``. New code imports from ``minima_nb``. Nothing is defined here.
"""

from __future__ import annotations

from .compat import CacheRow, Cooldown, PromptCache, RpmGate
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
from .engine.backend import OpenAIMinimaLlm
from .engine.pool import run_batched_callable
from .engine.pulse import BackendPulse, BackendStats

__all__ = [
    "BackendPulse", "BackendStats", "CacheRow", "Cooldown", "PromptCache", "OpenAIMinimaLlm", "RpmGate", "get_force_refresh",
    "get_last_cached", "get_retry_seed", "reset_debug_trace", "reset_force_refresh",
    "reset_retry_seed", "retry_temperature", "run_batched_callable", "set_debug_trace",
    "set_force_refresh", "set_last_cached", "set_retry_seed",
]
