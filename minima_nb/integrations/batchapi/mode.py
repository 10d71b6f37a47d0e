"""``backend.batch_mode(prefix)``: minima-llm's three-phase provider batch flow.

Inside ``async with backend.batch_mode("run-7"):`` every request the cache cannot answer is
collected instead of sent, and ``generate()`` (or ``run_batched``) returns a
:class:`~minima_nb.types.BatchPendingResponse` for it. On leaving the block the collected
requests are submitted as a :class:`~.job.BatchJob` and waited for; afterwards the same calls
are answered from the cache. The backend's sending step only hands a miss to the collector
while one is set; the flow lives here. Leaving the block with an exception submits nothing.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

from ...errors import ConfigError
from ...types import BatchPendingResponse, MinimaLlmRequest
from .job import BatchJob

__all__ = ["BatchCollector", "batch_mode"]


class BatchCollector:
    """The requests collected by one ``batch_mode`` block (identical ones once)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.requests: dict[str, MinimaLlmRequest] = {}
        self.job: BatchJob | None = None

    def collect(self, request: MinimaLlmRequest, model: str, key: str | None) -> BatchPendingResponse:
        """Queue ``request`` (already missed in the cache); its pending marker."""
        if key is None:
            raise ConfigError("batch_mode needs the prompt cache (the answers land there): set cache_dir (CACHE_DIR).")
        self.requests.setdefault(key, request if request.model else _with_model(request, model))
        return BatchPendingResponse(request_id=request.request_id, cache_key=key)

    @property
    def pending_count(self) -> int:
        """How many distinct requests are waiting to be submitted."""
        return len(self.requests)

    def has_pending(self) -> bool:
        """Whether anything was collected."""
        return bool(self.requests)


def _with_model(request: MinimaLlmRequest, model: str) -> MinimaLlmRequest:
    return MinimaLlmRequest(request.request_id, request.messages, request.temperature, request.max_tokens,
                            model, request.extra)


@contextlib.asynccontextmanager
async def batch_mode(backend: Any, prefix: str | None = None, *, progress: Any = "text") -> AsyncIterator[BatchCollector]:
    """Collect, then submit and wait on exit (see the module docstring)."""
    if backend.cache is None:
        raise ConfigError("batch_mode needs the prompt cache (the answers land there): set cache_dir (CACHE_DIR).")
    if getattr(backend, "_batch_collector", None) is not None:
        raise RuntimeError("batch_mode is already active on this backend; blocks do not nest")
    collector = BatchCollector(prefix or backend.config.parasail.effective_prefix or "minima")

    # The backend's one sending step (behind generate and run_batched, after the cache lookup)
    # hands a miss to the collector while one is set: the flow itself lives here.
    backend._batch_collector = collector
    try:
        yield collector
    finally:
        backend._batch_collector = None
    if collector.has_pending():
        print(f"minima_nb: submitting {collector.pending_count:,} requests as provider batches "
              f"(prefix {collector.prefix!r})", file=sys.stderr)
        collector.job = await BatchJob.asubmit(backend, list(collector.requests.values()), prefix=collector.prefix)
        await collector.job.await_done(progress=progress)
        print(f"minima_nb: batch job {collector.job.job_id} is {collector.job.info()['state']}; "
              "the answers are in the cache", file=sys.stderr)
