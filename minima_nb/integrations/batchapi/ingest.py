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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ...engine.wire import answer_of
from ...errors import ResponseError
from .chunks import custom_id_in, custom_id_of, read_lines
from .state import BatchState

__all__ = ["MISMATCH", "IngestCounts", "ingest_chunk"]

MISMATCH = "SchemaMismatch"  # the error type of an answer the schema refused (as on the live path)

_REQUEST_FIELDS = frozenset({"model", "messages", "temperature", "max_tokens"})
_RETRYABLE_CODES = frozenset({"batch_expired", "rate_limit_exceeded", "server_error", "timeout"})
_PUT_EVERY = 10_000  # answers handed to the cache's writer per lot: it commits one while the next is read
_decode = json.JSONDecoder().raw_decode
_string = json.encoder.encode_basestring
_SENTINEL_JSON = '"\\u0000minima-body"'  # no provider's body is this string
_SENTINEL = "\x00minima-body"
_INPUT_HEAD = f'","method":"POST","url":"{"/v1/chat/completions"}","body":{{"model":'


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


def parse_output_line(line: str) -> tuple[dict[str, Any], str | None] | None:
    """An output line as ``(record, the response body's own JSON text or None)``; None if torn.

    The body (most of the line) is decoded once where it stands and its text kept, so it is
    stored as the provider sent it instead of being encoded again; the rest of the line, with
    a sentinel in the body's place, is decoded on its own, and the sentinel found at
    ``response.body`` proves the body's span. Any other shape is decoded whole.
    """
    at = line.find('"body":')
    if at > 0:
        start = at + 7
        while line[start:start + 1] in (" ", "\t"):
            start += 1
        try:
            body, end = _decode(line, start)
            record = json.loads(line[:start] + _SENTINEL_JSON + line[end:])
        except ValueError:
            record = None
        response = record.get("response") if isinstance(record, dict) else None
        if isinstance(response, dict) and response.get("body") == _SENTINEL:
            response["body"] = body
            return record, line[start:end]
    try:
        record = json.loads(line)
    except ValueError:
        return None  # a torn line: its id counts as missing and is re-queued
    return (record, None) if isinstance(record, dict) else None


class _Inputs:
    """The request of each line of our own input file, in the cache's columns: model, messages
    JSON (the line's own text) and params JSON (one per set of request fields)."""

    def __init__(self, path: str) -> None:
        self.lines = {custom_id_in(line): line for line in read_lines(path)}
        self._params: dict[str, str] = {}
        self._models: dict[str, str] = {}

    def request(self, custom_id: str) -> tuple[str, str, str]:
        line = self.lines[custom_id].decode("utf-8")
        at = len('{"custom_id":"') + len(custom_id)
        start = at + len(_INPUT_HEAD)
        end = line.find(',"messages":', start) if line.startswith(_INPUT_HEAD, at) else -1
        if end > 0:  # ',"messages":' cannot occur inside the model's JSON string
            try:
                model = self._models.get(line[start:end])
                if model is None:
                    model = self._models[line[start:end]] = str(json.loads(line[start:end]))
                _, stop = _decode(line, end + 12)
                tail = line[stop:].rstrip()[:-1]  # the body's other fields, and its "}"
                params = self._params.get(tail)
                if params is None:
                    params = json.dumps(_params(json.loads("{" + tail[1:]) if tail.startswith(",") else {}),
                                        ensure_ascii=False)
                    self._params[tail] = params
                return model, line[end + 12:stop], params
            except ValueError:
                pass
        body = json.loads(line)["body"]  # another spelling: decoded whole
        return body["model"], json.dumps(body["messages"], ensure_ascii=False), json.dumps(
            _params(body), ensure_ascii=False)


def _marked(raw_text: str | None, raw: dict[str, Any], batch_id: Any, custom_id: str) -> str:
    """The stored raw body: the provider's own text with ``"minima_batch"`` added as its last field."""
    marker = f'"minima_batch":{{"batch_id":{_string(str(batch_id))},"custom_id":{_string(custom_id)}}}'
    if raw_text is not None and raw and "minima_batch" not in raw:
        text = raw_text.rstrip()
        return text[:-1].rstrip() + "," + marker + "}"
    return json.dumps({**raw, "minima_batch": {"batch_id": batch_id, "custom_id": custom_id}}, ensure_ascii=False)


def _records(path: str | None) -> Iterator[tuple[dict[str, Any], str | None]]:
    if not path:
        return
    for line in read_lines(path):
        parsed = parse_output_line(line.decode("utf-8", "replace"))
        if parsed is not None:
            yield parsed


def ingest_chunk(state: BatchState, cache: Any, namespace: str | None, chunk: dict[str, Any],
                 output_path: str | None, error_path: str | None, *, missing: str = "requeue",
                 batch_error: str | None = None, check: Callable[[str], str | None] | None = None) -> IngestCounts:
    """Read a finished chunk's files into the cache and the items' outcomes.

    ``missing`` is the outcome of lines in neither file (``"requeue"``, or ``"cancelled"``
    after a cancel); ``batch_error`` fails every line (a batch that failed validation).
    ``check`` (a schema's answer check) judges each answer: one it refuses is not cached and
    is re-queued as a ``SchemaMismatch`` (the next round asks again with a new seed).
    Answers go to the cache in lots (committed while the next lines are read) and are all
    committed before the items say ``done``; the ``done`` rows are one statement.
    """
    chunk_id, batch_id = chunk["chunk_id"], chunk["batch_id"]
    keys = {custom_id_of(key): key for key in state.chunk_items(chunk_id)}
    counts = IngestCounts()
    if batch_error is not None:
        state.finish_chunk(chunk_id, [], rest=("failed", None, "BatchFailed", batch_error))
        counts.failed = len(keys)
        return counts
    inputs = _Inputs(chunk["path"]) if output_path or error_path else None
    outcomes: list[tuple[Any, ...]] = []
    answered: set[str] = set()
    lot: list[tuple[Any, ...]] = []
    now = time.time()
    for record, raw_text in _chain(output_path, error_path):
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
                outcomes.append((key, "requeue", 200, "ResponseError", str(exc)))
                counts.requeued += 1
                continue
            reason = check(answer.text) if check is not None else None
            if reason is not None:
                outcomes.append((key, "requeue", 200, MISMATCH, reason[:500]))
                counts.requeued += 1
                continue
            assert inputs is not None
            model, messages, params = inputs.request(custom_id)
            lot.append((key, namespace, model, messages, params, answer.text,
                        _marked(raw_text, answer.raw, batch_id, custom_id), answer.input_tokens,
                        answer.output_tokens, answer.finish_reason, None, now))
            if len(lot) >= _PUT_EVERY:  # one lot commits while the next is read: at most two in memory
                cache.flush(timeout=600)
                cache.put_many(lot)
                lot = []
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
        outcomes.append((key, "requeue" if retry else "failed", status, kind, message))
        if retry:
            counts.requeued += 1
        else:
            counts.failed += 1
    for custom_id in keys.keys() - answered:
        if missing == "cancelled":
            outcomes.append((keys[custom_id], "failed", None, "BatchCancelled",
                             "the batch was cancelled before this row ran"))
            counts.failed += 1
        else:
            outcomes.append((keys[custom_id], "requeue", None, "BatchLineMissing",
                             "in neither the output nor the error file"))
            counts.requeued += 1
    cache.put_many(lot)
    cache.flush(timeout=600)  # the answers are committed before the items say "done"
    state.finish_chunk(chunk_id, outcomes)
    return counts


def _chain(*paths: str | None) -> Iterator[tuple[dict[str, Any], str | None]]:
    for path in paths:
        yield from _records(path)
