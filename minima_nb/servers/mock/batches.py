"""The mock server's ``/v1/batches``: create, retrieve, list (``after``), cancel, on a fast clock.

A batch's life is computed from the time since it was created, multiplied by ``time_scale``
(simulated seconds per real second): 60 s validating, ``run_s`` in progress (its request counts
grow with the time), 60 s finalizing, then completed. With the defaults (scale 3600, 600 s) a
batch finishes in a fifth of a real second. When a batch finishes, every input line is answered
as the chat endpoint would answer it (JSON for a requested schema; per-prompt scripted status
faults become error lines, ``invalid-json``/``wrong-json`` an unusable answer) and the output
and error files are stored in the :class:`~.files.FileStore`.

Scripted faults, one per created batch in order (``script_batches``):

``partial``        every 4th line fails with a 500 and every 7th with a 400 (in the error file)
``expire``         the batch expires half-way: half the lines in the output, the rest
                   ``batch_expired`` lines in the error file
``create-timeout`` the batch is created, but the create call answers only after
                   ``timeout_delay_s`` (a client with a shorter timeout sees an ambiguous failure)
``lost``           the batch disappears once created: every retrieve answers 404
``cancel-race``    the batch completes just as a cancel arrives: the cancel is refused (400)
``lag-output``     the first 2 retrieves after completion show ``output_file_id: null``
``invalid``        validation fails: status ``failed`` with ``errors.data``
``redirect``       the downloads of this batch's files redirect to a presigned URL
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .files import FileStore, not_found, unauthorized
from .replies import (
    BAD_JSON,
    ERRORS,
    MOCK_MODELS,
    answer_text,
    content_text,
    count_tokens,
    json_response,
    last_user_text,
    truncate,
)

__all__ = ["BATCH_FAULTS", "BatchStore"]

BATCH_FAULTS = frozenset({"partial", "expire", "create-timeout", "lost", "cancel-race", "lag-output",
                          "invalid", "redirect"})
_VALIDATE_S = 60.0
_FINALIZE_S = 60.0
_CANCEL_S = 60.0
_EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


def completion(body: dict, number: int, text: str | None = None) -> dict:
    """The chat.completion the chat endpoint would answer for ``body`` (JSON for a requested
    schema); ``text`` replaces the answer (a scripted unusable JSON)."""
    model = str(body.get("model") or MOCK_MODELS[0])
    raw = body.get("messages")
    messages: list[Any] = raw if isinstance(raw, list) else []
    text = answer_text(body, messages, model) if text is None else text
    text, finish_reason = truncate(text, body.get("max_tokens", body.get("max_completion_tokens")))
    prompt_tokens = sum(count_tokens(content_text(m.get("content"))) for m in messages if isinstance(m, dict))
    completion_tokens = count_tokens(text)
    return {"id": f"chatcmpl-batch-{number}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


@dataclass
class MockBatch:
    """One batch and its scripted fault."""

    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict
    created: float  # the store's clock
    created_at: int  # unix time, as reported
    fault: str | None
    total: int = 0
    cancel_at: float | None = None
    outcome: dict[str, Any] = field(default_factory=dict)  # status, file ids, counts once finished
    retrieves_after_done: int = 0


class BatchStore:
    """The batches of one mock server; thread-safe counters for tests."""

    def __init__(self, files: FileStore, authorized: Callable[[web.Request], bool],
                 line_fault: Callable[[str], str | None], *, time_scale: float, run_s: float,
                 timeout_delay_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if time_scale <= 0 or run_s <= 0:
            raise ValueError("batch_time_scale and batch_run_s must be > 0")
        self._files, self._authorized, self._line_fault = files, authorized, line_fault
        self._scale, self._run_s, self._timeout_delay_s, self._clock = time_scale, run_s, timeout_delay_s, clock
        self._lock = threading.Lock()
        self._batches: dict[str, MockBatch] = {}
        self._order: list[str] = []
        self._scripts: deque[str] = deque()
        self._lines: Counter[str] = Counter()
        self._answered = 0
        self.created = 0
        self.cancels = 0

    # -- test controls (any thread) --

    def script_batches(self, faults: list[str]) -> None:
        """Give the next created batches these faults, one per batch (``None``-like "ok" = none)."""
        unknown = sorted(set(faults) - BATCH_FAULTS - {"ok"})
        if unknown:
            raise ValueError(f"unknown batch fault(s) {unknown}; known: {sorted(BATCH_FAULTS)}")
        with self._lock:
            self._scripts.extend(faults)

    def lines_for(self, prompt: str) -> int:
        """How many batch lines whose last user message was ``prompt`` were answered."""
        with self._lock:
            return self._lines[prompt]

    @property
    def lines_total(self) -> int:
        """Every batch line answered (successfully or not)."""
        with self._lock:
            return sum(self._lines.values())

    def routes(self, app: web.Application, prefix: str) -> None:
        """Add the endpoints under ``prefix`` ("/v1" or "")."""
        app.router.add_post(f"{prefix}/batches", self._create)
        app.router.add_get(f"{prefix}/batches", self._list)
        app.router.add_get(f"{prefix}/batches/{{batch_id}}", self._retrieve)
        app.router.add_post(f"{prefix}/batches/{{batch_id}}/cancel", self._cancel)

    # -- handlers --

    async def _create(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return unauthorized()
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("input_file_id"), str):
            return _bad("the body must be a JSON object with input_file_id")
        if body.get("completion_window") != "24h":
            return _bad(f"completion_window {body.get('completion_window')!r} is not supported; use '24h'")
        stored = self._files.get(body["input_file_id"])
        if stored is None:
            return not_found("file")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict) or len(metadata) > 16:
            return _bad("metadata must be an object of at most 16 pairs")
        with self._lock:
            self.created += 1
            fault = self._scripts.popleft() if self._scripts else None
            batch = MockBatch(f"batch_mock_{self.created}", stored.id, str(body.get("endpoint")),
                              "24h", dict(metadata), self._clock(), int(time.time()),
                              None if fault == "ok" else fault,
                              total=stored.data.count(b"\n") + (not stored.data.endswith(b"\n")))
            self._batches[batch.id] = batch
            self._order.append(batch.id)
        if batch.fault == "create-timeout":
            await asyncio.sleep(self._timeout_delay_s)
        return json_response(200, self._describe(batch, count=False), {})

    async def _retrieve(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return unauthorized()
        batch = self._find(request.match_info["batch_id"])
        if batch is None:
            return not_found("batch")
        await self._advance(batch)
        return json_response(200, self._describe(batch, count=True), {})

    async def _list(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return unauthorized()
        try:
            limit = min(100, max(1, int(request.query.get("limit", "20"))))
        except ValueError:
            return _bad("limit must be a whole number")
        after = request.query.get("after")
        with self._lock:
            newest_first = [b for b in reversed(self._order) if self._batches[b].fault != "lost"]
        if after is not None:
            newest_first = newest_first[newest_first.index(after) + 1:] if after in newest_first else []
        page = [self._find(b) for b in newest_first[:limit]]
        data = []
        for batch in page:
            if batch is not None:
                await self._advance(batch)
                data.append(self._describe(batch, count=False))
        return json_response(200, {"object": "list", "data": data,
                                   "first_id": data[0]["id"] if data else None,
                                   "last_id": data[-1]["id"] if data else None,
                                   "has_more": len(newest_first) > limit}, {})

    async def _cancel(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return unauthorized()
        batch = self._find(request.match_info["batch_id"])
        if batch is None:
            return not_found("batch")
        with self._lock:
            self.cancels += 1
        if batch.fault == "cancel-race":
            await self._finish(batch, "completed", 1.0)
        await self._advance(batch)
        if batch.outcome:
            return _bad(f"Cannot cancel a batch with status {batch.outcome['status']!r}")
        with self._lock:
            if batch.cancel_at is None:
                batch.cancel_at = self._clock()
        return json_response(200, self._describe(batch, count=False), {})

    # -- the life of a batch --

    def _find(self, batch_id: str) -> MockBatch | None:
        with self._lock:
            batch = self._batches.get(batch_id)
        return None if batch is None or batch.fault == "lost" else batch

    def _elapsed(self, since: float) -> float:
        return (self._clock() - since) * self._scale

    def _status(self, batch: MockBatch) -> tuple[str, float]:
        """(status, share of lines done) before the batch is finished."""
        elapsed = self._elapsed(batch.created)
        if batch.cancel_at is not None:
            return "cancelling", min(1.0, max(0.0, (self._elapsed(batch.created) - _VALIDATE_S) / self._run_s))
        if elapsed < _VALIDATE_S:
            return "validating", 0.0
        if elapsed < _VALIDATE_S + self._run_s:
            return "in_progress", (elapsed - _VALIDATE_S) / self._run_s
        return "finalizing", 1.0

    async def _advance(self, batch: MockBatch) -> None:
        if batch.outcome:
            return
        elapsed = self._elapsed(batch.created)
        if batch.fault == "invalid" and elapsed >= _VALIDATE_S:
            batch.outcome = {"status": "failed", "completed": 0, "failed": 0,
                             "errors": {"object": "list", "data": [
                                 {"code": "invalid_json_line", "line": 1, "param": None,
                                  "message": "This line is not parseable as valid JSON."}]}}
        elif batch.cancel_at is not None and self._elapsed(batch.cancel_at) >= _CANCEL_S:
            await self._finish(batch, "cancelled", self._status(batch)[1])
        elif batch.cancel_at is None and elapsed >= _VALIDATE_S + self._run_s + _FINALIZE_S:
            await self._finish(batch, "expired" if batch.fault == "expire" else "completed",
                               0.5 if batch.fault == "expire" else 1.0)

    async def _finish(self, batch: MockBatch, status: str, share: float) -> None:
        stored = self._files.get(batch.input_file_id)
        data = stored.data if stored else b""
        ok, errors, counts = await asyncio.to_thread(self._answer_lines, batch, data, share, status)
        with self._lock:
            if batch.outcome:  # another request finished it meanwhile
                return
            output = self._files.add(ok, f"{batch.id}_output.jsonl", "batch_output") if ok else None
            error = self._files.add(errors, f"{batch.id}_errors.jsonl", "batch_output") if errors else None
            if batch.fault == "redirect":
                self._files.redirect_downloads += (output is not None) + (error is not None)
            batch.outcome = {"status": status, "output_file_id": output.id if output else None,
                             "error_file_id": error.id if error else None, **counts}

    def _answer_lines(self, batch: MockBatch, data: bytes, share: float,
                      status: str) -> tuple[bytes, bytes, dict[str, int]]:
        lines = [line for line in data.split(b"\n") if line.strip()]
        cutoff = int(len(lines) * share)
        ok: list[bytes] = []
        errors: list[bytes] = []
        prompts: Counter[str] = Counter()
        for number, line in enumerate(lines):
            item = json.loads(line)
            custom_id, body = item.get("custom_id"), item.get("body") or {}
            record: dict[str, Any] = {"id": f"batch_req_{batch.id}_{number}", "custom_id": custom_id}
            if number >= cutoff:
                if status == "expired":
                    record.update(response=None, error={"code": "batch_expired", "message": _EXPIRED_MESSAGE})
                    errors.append(json.dumps(record).encode())
                continue  # cancelled: never ran
            prompt = last_user_text(body.get("messages"))
            prompts[prompt] += 1
            fault = self._line_fault(prompt)
            if fault is None and batch.fault == "partial":
                fault = "500" if number % 4 == 3 else "400" if number % 7 == 6 else None
            if fault is not None and fault.isdigit() and int(fault) in ERRORS | {429: ()}:
                code = int(fault)
                message, kind, err_code = ERRORS.get(code, ("Rate limit reached", "requests", "rate_limit_exceeded"))
                record.update(response={"status_code": code, "request_id": f"req_{number}",
                                        "body": {"error": {"message": message, "type": kind, "code": err_code}}},
                              error=None)
                errors.append(json.dumps(record).encode())
                continue
            record.update(response={"status_code": 200, "request_id": f"req_{number}",
                                    "body": completion(body, number, BAD_JSON.get(fault or ""))}, error=None)
            ok.append(json.dumps(record).encode())
        with self._lock:
            self._lines.update(prompts)
        failed = len(errors) if status != "expired" else len(errors) - (len(lines) - cutoff)
        return (b"\n".join(ok) + b"\n" if ok else b"", b"\n".join(errors) + b"\n" if errors else b"",
                {"completed": len(ok), "failed": failed})

    def _describe(self, batch: MockBatch, *, count: bool) -> dict:
        """The Batch object; ``count`` counts a retrieve after completion (the lag fault)."""
        outcome = dict(batch.outcome)
        if outcome:
            status = outcome["status"]
            if count and batch.fault == "lag-output" and status == "completed":
                batch.retrieves_after_done += 1
                if batch.retrieves_after_done <= 2:
                    outcome["output_file_id"] = None
            completed, failed = outcome.get("completed", 0), outcome.get("failed", 0)
        else:
            status, share = self._status(batch)
            completed, failed = int(batch.total * share) if status != "validating" else 0, 0
        stamp = batch.created_at
        return {
            "id": batch.id, "object": "batch", "endpoint": batch.endpoint,
            "errors": outcome.get("errors"), "input_file_id": batch.input_file_id,
            "completion_window": batch.completion_window, "status": status,
            "output_file_id": outcome.get("output_file_id"), "error_file_id": outcome.get("error_file_id"),
            "created_at": stamp, "in_progress_at": None, "expires_at": stamp + 86400,
            "finalizing_at": None, "completed_at": stamp if status == "completed" else None,
            "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": batch.total, "completed": completed, "failed": failed},
            "metadata": batch.metadata,
        }


def _bad(message: str) -> web.Response:
    return json_response(400, {"error": {"message": message, "type": "invalid_request_error"}}, {})
