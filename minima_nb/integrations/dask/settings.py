"""What travels in the task graph: a run's settings, never its API key.

``EngineSettings`` is every :class:`~minima_nb.config.MinimaLlmConfig` setting except the key,
plus the NAME of the environment variable a worker reads the key from. ``RunSpec`` adds one
``generate()`` call's arguments (prompt, system, request fields, details...), the global
budget it paces under, whether it reports progress and the token its events carry. Both are frozen, picklable and free of
secrets: Dask pickles them into the graph, ships them to the scheduler (which builds the graph
since dask 2025.4) and tokenises them into task names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass, fields
from typing import Any

from ...config import MinimaLlmConfig

DEFAULT_KEY_ENV = "OPENAI_API_KEY"


@dataclass(frozen=True)
class EngineSettings:
    """Builds a worker's engine: the config without its key, and where a worker finds the key.

    ``key_env`` is None when the notebook's config has no key (a local server needs none).
    ``local_cache`` puts each worker's cache under its own local directory instead of the
    notebook's ``cache_dir`` (several hosts; bring the rows home with ``collect_caches``).
    """

    values: tuple[tuple[str, Any], ...]
    key_env: str | None = DEFAULT_KEY_ENV
    local_cache: bool = False

    @classmethod
    def from_config(cls, config: MinimaLlmConfig, *, key_env: str | None,
                    local_cache: bool = False) -> EngineSettings:
        """The settings of ``config`` (its key left out); ``key_env`` only when a key is needed."""
        values = tuple((f.name, getattr(config, f.name)) for f in fields(config) if f.name != "api_key")
        return cls(values, key_env if config.api_key else None, local_cache)

    def get(self, name: str) -> Any:
        """One setting's value."""
        return dict(self.values)[name]

    def config(self, *, api_key: str | None, cache_dir: str | None, rpm: int) -> MinimaLlmConfig:
        """The worker's config: these settings with the worker's key, cache dir and local rpm."""
        values = {**dict(self.values), "cache_dir": cache_dir, "rpm": rpm}
        return MinimaLlmConfig(api_key=api_key, **values)


@dataclass(frozen=True)
class BudgetSpec:
    """The global request budget a run paces under: ``rpm`` across every worker.

    ``budget_id`` names the budget on the scheduler (runs against the same endpoint and key
    share it); ``n_workers`` is the cluster size when the graph was built, for the fallback
    of an equal share each should the scheduler's budget be unreachable.
    """

    budget_id: str
    rpm: int
    n_workers: int


@dataclass(frozen=True)
class RunSpec:
    """One ``generate()`` call as the partition function needs it (no key, no live object)."""

    engine: EngineSettings
    prompt: Any  # a column name or a {field} template; unused for a Series
    system: str | None
    params: tuple[tuple[str, Any], ...]  # model, temperature, max_tokens, extra
    details: bool
    force_refresh: bool
    name: Hashable | None
    budget: BudgetSpec | None = None
    report: bool = True
    token: str | None = None  # names the computation in progress events (see .live)
    grid: tuple[tuple[str, Any], ...] | None = None  # a sweep's grid; None for generate()

    def request_params(self) -> dict[str, Any]:
        """The request fields as ``Generation`` takes them."""
        return dict(self.params)

    def replace(self, **changes: Any) -> RunSpec:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
