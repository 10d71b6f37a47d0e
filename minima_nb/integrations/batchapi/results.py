"""What a job shows: its progress snapshot, and one result per request once it is final.

A row's result is the cached answer (``cache_source="batch"``) or a
:class:`~minima_nb.types.MinimaLlmFailure` carrying the provider's message for that line.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ...types import (
    BatchSnapshot,
    MinimaLlmFailure,
    MinimaLlmRequest,
    MinimaLlmResponse,
    MinimaLlmResult,
    Usage,
)
from .state import BatchState

__all__ = ["DONE_CHUNKS", "job_results", "snapshot"]

DONE_CHUNKS = frozenset({"ingested", "discarded", "cancelled"})


def snapshot(state: BatchState, job_id: str, started: float) -> BatchSnapshot:
    """The job as a progress snapshot: rows done (finished rows plus the running batches' counts)."""
    chunks = state.chunks(job_id)
    counts = state.counts(job_id)
    running = sum(c["completed"] or 0 for c in chunks if c["status"] not in DONE_CHUNKS)
    states = sorted({c["remote_status"] or c["status"] for c in chunks if c["status"] not in DONE_CHUNKS})
    total = sum(counts.values())
    return BatchSnapshot(total=total, done=counts.get("done", 0) + counts.get("failed", 0) + running,
                         failed=counts.get("failed", 0), retrying=counts.get("requeue", 0),
                         in_flight=sum(c["status"] not in DONE_CHUNKS for c in chunks),
                         elapsed_s=time.monotonic() - started,
                         last_error=f"batches: {', '.join(states) or 'done'}")


def job_results(state: BatchState, cache: Any, job_id: str, requests: Sequence[MinimaLlmRequest],
                keys: Sequence[str], model: str) -> list[MinimaLlmResult]:
    """One result per request, in order."""
    unique = list(dict.fromkeys(keys))
    rows = cache.get_many_rows(unique, count_misses=False)
    outcomes = state.outcomes(job_id, [k for k in unique if k not in rows])
    out: list[MinimaLlmResult] = []
    for request, key in zip(requests, keys, strict=True):
        row = rows.get(key)
        if row is not None:
            text, input_tokens, output_tokens, finish_reason, latency_s, answered_by = row[:6]
            out.append(MinimaLlmResponse(request.request_id, text, True, Usage(input_tokens, output_tokens),
                                         finish_reason, latency_s, 0, answered_by, cache_source="batch"))
            continue
        _, status, kind, error = outcomes.get(key, ("failed", None, None, None))
        out.append(MinimaLlmFailure(request.request_id, kind or "BatchLineMissing",
                                    error or "no answer came back for this row", status=status,
                                    attempts=1, retryable=kind in ("RateLimited", "ServerError", "BatchExpired"),
                                    model=request.model or model))
    return out
