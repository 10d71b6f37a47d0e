"""Input files: requests as JSONL lines, streamed to files split by line count, bytes and model.

A line is ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`` where the
body is exactly what the live path sends (:func:`~minima_nb.engine.wire.build_payload`) and
``custom_id`` is a digest of the request's cache key, never a position: identical prompts are
one line, and a line maps back to its cache key whatever order the provider answers in.
Requests are read in windows of a few thousand, so memory stays flat however many rows a job
has; duplicates are dropped against the window and against the state file's items (the
items' primary key makes a duplicate id in one job impossible, so none is ever uploaded).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...cache import key_function
from ...engine.wire import build_payload, encode
from ...types import MinimaLlmRequest
from .state import BatchState

__all__ = ["ChunkLimits", "custom_id_of", "keys_of", "line_of", "read_lines", "write_chunks"]

LINE_URL = "/v1/chat/completions"
_WINDOW = 5000
_PREFIX = b'{"custom_id":"'


def custom_id_of(key: str) -> str:
    """The custom_id of a cache key: 44 characters of ``[A-Za-z0-9-]``, stable across runs."""
    return "mnb-" + key[:40]  # the key is a SHA-256 hex digest: 160 of its bits name it


def line_of(custom_id: str, body: bytes) -> bytes:
    """One JSONL input line around an encoded request body."""
    return b'{"custom_id":"%s","method":"POST","url":"%s","body":%s}\n' % (
        custom_id.encode(), LINE_URL.encode(), body)


def custom_id_in(line: bytes) -> str:
    """The custom_id of one of our own input lines, read without parsing the JSON."""
    if not line.startswith(_PREFIX):
        raise ValueError(f"not a minima_nb batch input line: {line[:40]!r}")
    return line[len(_PREFIX):line.index(b'"', len(_PREFIX))].decode()


def keys_of(requests: Iterable[MinimaLlmRequest], model: str, namespace: str | None
            ) -> Iterator[tuple[MinimaLlmRequest, str, str]]:
    """``(request, its model, its cache key)``: the key the backend gives it (same function)."""
    functions: dict[tuple[Any, ...], Callable[[Any], tuple[str, str]]] = {}
    for request in requests:
        used = request.model or model
        fields = (used, type(request.temperature), request.temperature, request.max_tokens, id(request.extra))
        key_of = functions.get(fields)
        if key_of is None:
            key_of = key_function(used, request.temperature, request.max_tokens, request.extra, namespace)
            if len(functions) < 256:
                functions[fields] = key_of
        yield request, used, key_of(request.messages)[0]


@dataclass(frozen=True)
class ChunkLimits:
    """What one input file may hold."""

    lines: int = 50_000
    bytes: int = 190_000_000


@dataclass
class _Open:
    chunk_id: int
    path: Path
    handle: Any
    lines: int = 0
    size: int = 0
    sha256: Any = field(default_factory=hashlib.sha256)


class _Writer:
    """Open input files per model; a file is closed (and recorded ``written``) when full."""

    def __init__(self, state: BatchState, job_id: str, directory: Path, limits: ChunkLimits, round_: int) -> None:
        self.state, self.job_id, self.directory, self.limits, self.round = state, job_id, directory, limits, round_
        self.open: dict[str, _Open] = {}
        self.closed: list[int] = []

    def target(self, model: str, size: int) -> _Open:
        current = self.open.get(model)
        if current is not None and (current.lines >= self.limits.lines or current.size + size > self.limits.bytes):
            self.close(model)
            current = None
        if current is None:
            chunk_id = self.state.add_chunk(self.job_id, self.round, model, "", 0, 0, "")
            path = self.directory / f"{self.job_id}-{chunk_id}.jsonl"
            self.state.update_chunk(chunk_id, status="writing", path=str(path))
            current = self.open[model] = _Open(chunk_id, path, open(path, "wb"))  # noqa: SIM115
        return current

    def write(self, model: str, line: bytes) -> int:
        if len(line) > self.limits.bytes:
            raise ValueError(f"one request is {len(line):,} bytes encoded, over the batch limit of "
                             f"{self.limits.bytes:,} (parasail.max_batch_bytes)")
        current = self.target(model, len(line))
        current.handle.write(line)
        current.sha256.update(line)
        current.lines += 1
        current.size += len(line)
        return current.chunk_id

    def close(self, model: str) -> None:
        current = self.open.pop(model)
        current.handle.close()
        self.state.update_chunk(current.chunk_id, status="written", lines=current.lines, bytes=current.size,
                                input_sha256=current.sha256.hexdigest())
        self.closed.append(current.chunk_id)

    def close_all(self) -> list[int]:
        for model in list(self.open):
            self.close(model)
        return self.closed


def write_chunks(state: BatchState, job_id: str, directory: str | os.PathLike[str],
                 rows: Iterable[tuple[MinimaLlmRequest, str, str]], limits: ChunkLimits) -> tuple[list[int], int, int]:
    """Write the unique requests of ``rows`` (``keys_of``'s triples) into input files.

    Returns (chunk ids, rows seen, unique prompts written). Items are recorded per window,
    before their file is closed, so the state knows every line a file holds.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    writer = _Writer(state, job_id, folder, limits, 1)
    seen = unique = 0
    window: dict[str, tuple[MinimaLlmRequest, str, str]] = {}

    def flush() -> int:
        known = state.known(job_id, list(window))
        items = []
        for custom_id, (request, model, key) in window.items():
            if custom_id in known:
                continue
            body = encode(build_payload(request, model))
            items.append((custom_id, key, writer.write(model, line_of(custom_id, body))))
        state.add_items(job_id, items)
        window.clear()
        return len(items)

    try:
        for request, model, key in rows:
            seen += 1
            window.setdefault(custom_id_of(key), (request, model, key))
            if len(window) >= _WINDOW:
                unique += flush()
        if window:
            unique += flush()
    finally:
        chunk_ids = writer.close_all()
    return chunk_ids, seen, unique


def read_lines(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """The non-empty lines of a JSONL file, streamed."""
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                yield line


def rewrite(state: BatchState, job_id: str, directory: str | os.PathLike[str],
            sources: dict[str, tuple[str, set[str]]], limits: ChunkLimits, round_: int) -> list[int]:
    """A new round: the lines named by ``sources`` (first input path -> (model, custom_ids)).

    The items move to their new chunk before it is marked ``written``: a chunk left
    ``writing`` by a crash is discarded on resume and its items re-queued again.
    """
    writer = _Writer(state, job_id, Path(directory), limits, round_)
    moved: dict[int, list[str]] = {}
    for path, (model, wanted) in sources.items():
        for line in read_lines(path):
            custom_id = custom_id_in(line)
            if custom_id in wanted:
                chunk_id = writer.write(model, line if line.endswith(b"\n") else line + b"\n")
                moved.setdefault(chunk_id, []).append(custom_id)
    for model in list(writer.open):
        writer.open[model].handle.flush()
    for chunk_id, custom_ids in moved.items():
        state.move_items(job_id, custom_ids, chunk_id)
    return writer.close_all()
