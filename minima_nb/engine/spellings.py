"""minima-llm's spellings on the backend: ``cfg``, ``from_env``, ``run_batched_callable``, the pulse,
``batch_mode`` (which hands over to the batch-API edge, loaded when called).

Kept out of :mod:`.backend` so that the backend reads as what it does; ``OpenAIMinimaLlm``
inherits these. Each is a thin alias over the backend's own parts, with minima-llm's name and
meaning, so code written for minima-llm runs with only its import line changed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ..config import MinimaLlmConfig
from .pool import ProgressArg, run_batched_callable
from .pulse import BackendPulse

T = TypeVar("T")
R = TypeVar("R")


class PredecessorSpellings:
    """minima-llm's names for what :class:`~.backend.OpenAIMinimaLlm` does (a mixin)."""

    config: MinimaLlmConfig
    _pulse: BackendPulse
    _batch_collector: Any = None  # set inside batch_mode(): the backend collects misses instead of sending

    def batch_mode(self, prefix: str | None = None) -> Any:
        """minima-llm's provider batch flow: ``async with backend.batch_mode("run-7"): ...`` collects
        the cache misses (``generate`` returns ``BatchPendingResponse``), then submits them as
        provider batches and waits on exit; afterwards the same calls are answered from the cache."""
        from ..integrations.batchapi.mode import batch_mode  # the edge, loaded when used

        return batch_mode(self, prefix)

    @property
    def cfg(self) -> MinimaLlmConfig:
        """The config (minima-llm's name for ``config``): ``backend.cfg.describe()``."""
        return self.config

    @classmethod
    def from_env(cls, **overrides: Any) -> Any:
        """A backend configured from the environment (``MinimaLlmConfig.from_env(**overrides)``)."""
        return cls(MinimaLlmConfig.from_env(**overrides))  # type: ignore[call-arg]

    async def run_batched_callable(
        self,
        items: Sequence[T],
        async_callable: Callable[[T], Awaitable[R]],
        *,
        progress: ProgressArg = True,
        label: str = "minima",
    ) -> list[R]:
        """Run ``async_callable`` over ``items`` with this backend's batch settings (workers,
        failure budget, progress); results in input order, a failure in its row's slot."""
        return await run_batched_callable(
            items, async_callable, self.config.batch, progress=progress, label=label
        )

    def get_pulse(self) -> BackendPulse:
        """This backend's running totals (cache hits, server calls, tokens, latency)."""
        return self._pulse

    def reset_pulse(self) -> None:
        """Start the totals again from zero."""
        self._pulse = BackendPulse()

    get_stats = get_pulse  # minima-llm's earlier names
    reset_stats = reset_pulse
