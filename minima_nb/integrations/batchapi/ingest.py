"""Output files into the prompt cache: every line of the output *and* the error file is a row outcome.

A ``200`` line's answer is stored in the cache under the cache key its ``custom_id`` maps to,
with its usage, the request it answers (read back from our own input line, so the stored
request is exactly the one sent) and ``raw["minima_batch"]`` marking it as a batch answer, so
a later ``generate()`` serves it with zero requests. Other lines become item outcomes:
``batch_expired``, 429 and 5xx lines are re-queued (a later round sends them again); 4xx
lines fail for good with the provider's message. Lines missing from both files are
re-queued, or cancelled when the job was cancelled. Unknown ids are ignored (counted).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ...engine.wire import answer_of
from ...errors import ResponseError
from .chunks import custom_id_in, read_lines
from .state import BatchState

__all__ = ["IngestCounts", "ingest_chunk"]

_REQUEST_FIELDS = frozenset({"model", "messages", "temperature", "max_tokens"})
_RETRYABLE_CODES = frozenset({"batch_expired", "rate_limit_exceeded", "server_error", "timeout"})


@dataclass
class IngestCounts:
    """What one chunk's files said."""

    done: int = 0
    failed: int = 0
    requeued: int = 0
    unknown: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


def _error_kind(status: int | None) -> str:
    if status == 429:
        return "RateLimited"
    if status in (401, 403):
        return "AuthError"
    if status is not None and (status >= 500 or status in (408, 409)):
        return "ServerError"
    return "ClientError" if status is not None else "BatchLineError"


def _params(body: dict[str, Any]) -> dict[str, Any]:
    extra = {k: v for k, v in body.items() if k not in _REQUEST_FIELDS}
    return {"temperature": body.get("temperature"), "max_tokens": body.get("max_tokens"), "extra": extra or None}


def _records(path: str | None) -> Iterator[dict[str, Any]]:
    if not path:
        return
    for line in read_lines(path):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn line: its id counts as missing and is re-queued
        if isinstance(record, dict):
            yield record


def ingest_chunk(state: BatchState, cache: Any, namespace: str | None, chunk: dict[str, Any],
                 output_path: str | None, error_path: str | None, *, missing: str = "requeue",
                 batch_error: str | None = None) -> IngestCounts:
    """Read a finished chunk's files into the cache and the items' outcomes.

    ``missing`` is the outcome of lines in neither file (``"requeue"``, or ``"cancelled"``
    after a cancel); ``batch_error`` fails every line (a batch that failed validation).
    """
    job_id, chunk_id, batch_id = chunk["job_id"], chunk["chunk_id"], chunk["batch_id"]
    keys = state.chunk_items(chunk_id)
    counts = IngestCounts()
    outcomes: list[tuple[Any, ...]] = []
    if batch_error is not None:
        outcomes = [(cid, "failed", None, "BatchFailed", batch_error) for cid in keys]
        state.set_items(job_id, outcomes)
        counts.failed = len(outcomes)
        return counts
    inputs = {custom_id_in(line): line for line in read_lines(chunk["path"])}
    answered: set[str] = set()
    now = time.time()
    put = cache.put_fields
    for record in _chain(output_path, error_path):
        custom_id = record.get("custom_id")
        key = keys.get(custom_id) if isinstance(custom_id, str) else None
        if key is None or not isinstance(custom_id, str) or custom_id in answered:
            counts.unknown += key is None
            continue
        answered.add(custom_id)
        response = record.get("response") if isinstance(record.get("response"), dict) else None
        status = response.get("status_code") if response else None
        if response is not None and status == 200:
            try:
                answer = answer_of(response.get("body"))
            except ResponseError as exc:
                outcomes.append((custom_id, "requeue", 200, "ResponseError", str(exc)))
                counts.requeued += 1
                continue
            body = json.loads(inputs[custom_id])["body"]
            raw = dict(answer.raw)
            raw["minima_batch"] = {"batch_id": batch_id, "custom_id": custom_id}
            put(key, namespace, body["model"], body["messages"], _params(body), answer.text, raw=raw,
                input_tokens=answer.input_tokens, output_tokens=answer.output_tokens,
                finish_reason=answer.finish_reason, created_at=now)
            outcomes.append((custom_id, "done", 200, None, None))
            counts.done += 1
            counts.input_tokens += answer.input_tokens or 0
            counts.output_tokens += answer.output_tokens or 0
            continue
        error = record.get("error") if isinstance(record.get("error"), dict) else None
        body = response.get("body") if response else None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            error = body["error"]
        code = str((error or {}).get("code") or "")
        message = str((error or {}).get("message") or f"the batch answered status {status}")[:500]
        retry = code in _RETRYABLE_CODES or (isinstance(status, int) and (status == 429 or status >= 500))
        kind = "BatchExpired" if code == "batch_expired" else _error_kind(status if isinstance(status, int) else None)
        outcomes.append((custom_id, "requeue" if retry else "failed", status, kind, message))
        if retry:
            counts.requeued += 1
        else:
            counts.failed += 1
    for custom_id in keys.keys() - answered:
        if missing == "cancelled":
            outcomes.append((custom_id, "failed", None, "BatchCancelled", "the batch was cancelled before this row ran"))
            counts.failed += 1
        else:
            outcomes.append((custom_id, "requeue", None, "BatchLineMissing", "in neither the output nor the error file"))
            counts.requeued += 1
    cache.flush()  # the answers are committed before the items say "done"
    state.set_items(job_id, outcomes)
    return counts


def _chain(*paths: str | None) -> Iterator[dict[str, Any]]:
    for path in paths:
        yield from _records(path)
