"""Value types that cross every layer: the request, its two outcomes, and the backend Protocol.

Everything here is a frozen dataclass of plain Python values, so results can be pickled,
compared in tests, and sent between processes (Dask) without dragging sessions along.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = Mapping[str, Any]


@dataclass(frozen=True)
class MinimaLlmRequest:
    """One chat-completion request.

    ``model`` overrides the configured model for this request only; ``extra`` holds further
    OpenAI parameters (``top_p``, ``seed``, ``response_format``...) sent as-is and part of the
    cache key.
    """

    request_id: str
    messages: Sequence[Message]
    temperature: float | None = None
    max_tokens: int | None = None
    model: str | None = None
    extra: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Usage:
    """Token counts reported by the server; ``None`` when the server did not say."""

    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True)
class MinimaLlmResponse:
    """A successful answer.

    ``raw`` is the server's JSON body; it is kept only when asked for (it stays in the cache
    otherwise) so that large batches retain little more than their texts.
    """

    request_id: str
    text: str
    cached: bool = False
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    latency_s: float | None = None
    attempts: int = 1
    model: str | None = None
    raw: Mapping[str, Any] | None = None
    # Where a cached answer came from (None for a fresh one): "primary" (this cache), "legacy"
    # (minima-llm's table in the same file), "synonym:<model>", "lookup:<dir>" and combinations
    # such as "lookup:<dir>:synonym:<model>" (minima_nb.cache.adoption has the full list).
    cache_source: str | None = None

    @property
    def input_tokens(self) -> int | None:
        """Prompt tokens, as reported by the server."""
        return self.usage.input_tokens

    @property
    def output_tokens(self) -> int | None:
        """Completion tokens, as reported by the server."""
        return self.usage.output_tokens


@dataclass(frozen=True)
class MinimaLlmFailure:
    """A request that failed for good; it takes the failed row's slot in batch results.

    ``error_type`` is the name of the error class from :mod:`minima_nb.errors`
    (``"RateLimited"``, ``"RequestTimeout"``...), ``status`` the last HTTP status if any.
    """

    request_id: str
    error_type: str
    message: str
    status: int | None = None
    attempts: int = 0
    retryable: bool = False
    model: str | None = None

    # Deliberately no ``text`` attribute: minima-llm code tells answers from failures with
    # ``hasattr(r, "text")``, and that must keep working unchanged.

    @property
    def cached(self) -> bool:
        """Failures are never cached; lets code read ``r.cached`` from any result."""
        return False


MinimaLlmResult = MinimaLlmResponse | MinimaLlmFailure


@runtime_checkable
class AsyncMinimaLlmBackend(Protocol):
    """What the batch runner, the accessor and the adapters need from a backend."""

    async def generate(
        self, request: MinimaLlmRequest, force_refresh: bool = False
    ) -> MinimaLlmResult: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class BatchSnapshot:
    """A point-in-time view of one batch, emitted by the batch runner to a progress sink.

    Counts are of input rows except ``sent``/``received`` (HTTP attempts) and the token totals.
    ``rpm`` is the completion rate over the recent window, in rows per minute; ``eta_s`` is
    ``None`` until it can be estimated; ``idle_s`` is the time since the last completion.
    """

    total: int
    done: int = 0
    cached: int = 0
    failed: int = 0
    retrying: int = 0
    in_flight: int = 0
    sent: int = 0
    received: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    rpm: float = 0.0
    elapsed_s: float = 0.0
    eta_s: float | None = None
    idle_s: float = 0.0
    mean_latency_s: float | None = None
    last_error: str | None = None

    @property
    def fraction(self) -> float:
        """Share of rows finished, 1.0 for an empty batch."""
        return 1.0 if self.total == 0 else self.done / self.total
