"""Value types that cross every layer: the request, its two outcomes, and the backend Protocol.

Everything here is a frozen dataclass of plain Python values, so results can be pickled,
compared in tests, and sent between processes (Dask) without dragging sessions along. The
per-row ones use ``__slots__``: a batch holds a request and a result per row until it ends,
and at a million rows the instance dicts they would otherwise carry were most of the peak
memory beyond the texts (and their making a measurable share of the CPU per row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

Message = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts reported by the server; ``None`` when the server did not say."""

    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True, init=False, slots=True)
class MinimaLlmResponse:
    """A successful answer.

    ``raw`` is the server's JSON body; it is kept only when asked for (it stays in the cache
    otherwise) so that large batches retain little more than their texts. ``cache_source``
    says where a cache hit came from (``None`` for a live answer). As in minima-llm, the token
    counts may be given as ``input_tokens=`` / ``output_tokens=`` instead of ``usage=``.
    """

    request_id: str
    text: str
    cached: bool
    usage: Usage
    finish_reason: str | None
    latency_s: float | None
    attempts: int
    model: str | None
    raw: Mapping[str, Any] | None
    cache_source: str | None

    def __init__(
        self,
        request_id: str,
        text: str,
        cached: bool = False,
        usage: Usage | None = None,
        finish_reason: str | None = None,
        latency_s: float | None = None,
        attempts: int = 1,
        model: str | None = None,
        raw: Mapping[str, Any] | None = None,
        cache_source: str | None = None,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None:
        if usage is None:
            usage = Usage(input_tokens, output_tokens)
        elif input_tokens is not None or output_tokens is not None:
            raise TypeError("give the token counts either as usage= or as input_tokens=/output_tokens=, not both")
        set_field = object.__setattr__  # frozen: the dataclass's own __init__ does the same
        set_field(self, "request_id", request_id)
        set_field(self, "text", text)
        set_field(self, "cached", cached)
        set_field(self, "usage", usage)
        set_field(self, "finish_reason", finish_reason)
        set_field(self, "latency_s", latency_s)
        set_field(self, "attempts", attempts)
        set_field(self, "model", model)
        set_field(self, "raw", raw)
        set_field(self, "cache_source", cache_source)

    @property
    def input_tokens(self) -> int | None:
        """Prompt tokens, as reported by the server."""
        return self.usage.input_tokens

    @property
    def output_tokens(self) -> int | None:
        """Completion tokens, as reported by the server."""
        return self.usage.output_tokens


@dataclass(frozen=True, slots=True)
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
    body_snippet: str | None = None
    timeout_s: float | None = None
    attempt_timestamps: tuple[float, ...] = ()

    # Deliberately no ``text`` attribute: minima-llm code tells answers from failures with
    # ``hasattr(r, "text")``, and that must keep working unchanged.

    @property
    def cached(self) -> bool:
        """Failures are never cached; lets code read ``r.cached`` from any result."""
        return False

    def format_attempts(self) -> str:
        """When each attempt started, relative to the first: ``"[+0.0s, +0.5s, +1.6s]"`` ("" if unknown)."""
        if not self.attempt_timestamps:
            return ""
        first = self.attempt_timestamps[0]
        return "[" + ", ".join(f"+{t - first:.1f}s" for t in self.attempt_timestamps) + "]"


MinimaLlmResult = MinimaLlmResponse | MinimaLlmFailure


@dataclass(frozen=True)
class BatchPendingResponse:
    """What ``generate`` returns for a request queued for a provider batch (``batch_mode``).

    A marker, not an answer: it has no ``text``. Once the batch has finished, asking again
    returns the answer from the cache under ``cache_key``.
    """

    request_id: str
    cache_key: str


@runtime_checkable
class AsyncMinimaLlmBackend(Protocol):
    """What the batch runner, the accessor and the adapters need from a backend."""

    async def generate(
        self, request: MinimaLlmRequest, force_refresh: bool = False
    ) -> MinimaLlmResult: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
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
    # The last few answers and failures, (request_id, text or reason), newest last: the preview.
    recent_answers: tuple[tuple[str, str], ...] = ()
    recent_failures: tuple[tuple[str, str], ...] = ()

    @property
    def fraction(self) -> float:
        """Share of rows finished, 1.0 for an empty batch."""
        return 1.0 if self.total == 0 else self.done / self.total
