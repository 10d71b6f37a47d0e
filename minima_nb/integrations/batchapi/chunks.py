"""Input files: requests as JSONL lines, streamed to files split by line count, bytes and model.

A line is ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`` where the
body is exactly what the live path sends (:func:`~minima_nb.engine.wire.build_payload`) and
``custom_id`` is a digest of the request's cache key, never a position: identical prompts are
one line, and a line maps back to its cache key whatever order the provider answers in.
Requests are read in windows of a few thousand, so memory stays flat however many rows a job
has; duplicates are dropped against the window and, across windows, by a fixed-size filter
whose rare "maybe" is settled against the state file's items, so no duplicate id is ever
uploaded. Each line is spelled from parts encoded once per set of request fields around the
messages' JSON (the very text the cache key hashed), and written a window at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...cache import messages_json, messages_key_function
from ...engine.wire import build_payload, encode
from ...types import MinimaLlmRequest
from .state import BatchState

__all__ = ["ChunkLimits", "custom_id_of", "keyed", "keys_of", "line_of", "read_lines", "write_chunks"]

LINE_URL = "/v1/chat/completions"
_WINDOW = 5000
_PREFIX = b'{"custom_id":"'
_BLOOM_BITS = 1 << 26  # 8 MB whatever the job's size: memory stays flat (see _Seen)

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


def _fields(request: MinimaLlmRequest, used: str) -> tuple[Any, ...]:
    return used, type(request.temperature), request.temperature, request.max_tokens, id(request.extra)


Row = tuple[MinimaLlmRequest, str, str, "bytes | None"]  # request, its model, its cache key, its input line


def keyed(requests: Iterable[MinimaLlmRequest], model: str, namespace: str | None) -> Iterator[Row]:
    """``(request, its model, its cache key, its input line)``: the key the backend gives it,
    computed per set of request fields, and the line spelled around the very messages JSON the
    key hashed (the parts around it encoded once per set of fields, see :class:`_Bodies`)."""
    groups: dict[tuple[Any, ...], tuple[Callable[[Any], tuple[str, str]], tuple[str, str] | None]] = {}
    for request in requests:
        used = request.model or model
        fields = (used, type(request.temperature), request.temperature, request.max_tokens, id(request.extra))
        group = groups.get(fields)
        if group is None:
            group = (messages_key_function(used, request.temperature, request.max_tokens, request.extra, namespace),
                     _Bodies.split(request, used))
            if len(groups) < 256:
                groups[fields] = group
        key, messages = group[0](request.messages)
        parts = group[1]
        if parts is None:
            yield request, used, key, None
        else:
            yield request, used, key, (f'{{"custom_id":"mnb-{key[:40]}","method":"POST","url":"{LINE_URL}",'
                                       f'"body":{parts[0]}{messages}{parts[1]}}}\n').encode()


def keys_of(requests: Iterable[MinimaLlmRequest], model: str, namespace: str | None
            ) -> Iterator[tuple[MinimaLlmRequest, str, str]]:
    """``(request, its model, its cache key)``: the key the backend gives it (same function)."""
    for request, used, key, _ in keyed(requests, model, namespace):
        yield request, used, key


class _Bodies:
    """Request bodies as ``head + messages JSON + tail``: what :func:`build_payload` encodes,
    with the parts around the messages encoded once per set of request fields."""

    def __init__(self) -> None:
        self._parts: dict[tuple[Any, ...], tuple[str, str] | None] = {}

    def line(self, key: str, request: MinimaLlmRequest, model: str) -> bytes:
        fields = _fields(request, model)
        if fields in self._parts:
            parts = self._parts[fields]
        else:
            parts = self.split(request, model)
            if len(self._parts) < 256:
                self._parts[fields] = parts
        if parts is None:  # extra sets "messages" itself: the general encoder
            return line_of(custom_id_of(key), encode(build_payload(request, model)))
        return (f'{{"custom_id":"{custom_id_of(key)}","method":"POST","url":"{LINE_URL}","body":{parts[0]}'
                f'{messages_json(request.messages)}{parts[1]}}}\n').encode()

    @staticmethod
    def split(request: MinimaLlmRequest, model: str) -> tuple[str, str] | None:
        """The body's text before and after the messages' JSON, or None when it has no one place."""
        empty = MinimaLlmRequest(request.request_id, [], request.temperature, request.max_tokens, model, request.extra)
        text = encode(build_payload(empty, model)).decode()
        marker = '"messages":[]'
        if text.count(marker) != 1 or (request.extra and "messages" in request.extra):
            return None
        head, tail = text.split(marker)
        return head + '"messages":', tail


class _Seen:
    """Which cache keys a job's files hold already, in flat memory: a Bloom filter (two bits per
    key, taken from the key's own hash digits) answers "new" for almost every new key; its rare
    "maybe" is settled against the state file's items."""

    def __init__(self, *, everything: bool = False) -> None:
        self.bits = bytearray(_BLOOM_BITS // 8)
        self.everything = everything  # keys written before this filter was made: look every key up

    def maybe(self, key: str) -> bool:
        """Whether ``key`` may have been added (and add it)."""
        if self.everything:
            return True
        bits, digits = self.bits, int(key[:14], 16)  # 56 bits of SHA-256: two 26-bit positions
        a, b = digits & (_BLOOM_BITS - 1), (digits >> 28) & (_BLOOM_BITS - 1)
        byte_a, bit_a, byte_b, bit_b = a >> 3, 1 << (a & 7), b >> 3, 1 << (b & 7)
        if bits[byte_a] & bit_a and bits[byte_b] & bit_b:
            return True
        bits[byte_a] |= bit_a
        bits[byte_b] |= bit_b
        return False


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
    block: list[bytes] = field(default_factory=list)  # lines not yet written: one write per window
    keys: list[tuple[int, str]] = field(default_factory=list)  # (former chunk, key) of those lines


class _Writer:
    """Open input files per model; a file is closed (and recorded ``written``) when full.

    Lines are written a window at a time in one block, and their items recorded in the state
    (new ones added, or re-queued ones moved here) before the file is closed.
    """

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

    def write(self, model: str, line: bytes, key: str, origin: int = 0) -> None:
        size = len(line)
        if size > self.limits.bytes:
            raise ValueError(f"one request is {size:,} bytes encoded, over the batch limit of "
                             f"{self.limits.bytes:,} (parasail.max_batch_bytes)")
        current = self.open.get(model)
        if current is None or current.lines >= self.limits.lines or current.size + size > self.limits.bytes:
            current = self.target(model, size)
        current.block.append(line)
        current.keys.append((origin, key))
        current.lines += 1
        current.size += size

    def sync(self, current: _Open) -> None:
        """Write the chunk's pending block and record its items."""
        if current.block:
            data = b"".join(current.block)
            current.handle.write(data)
            current.sha256.update(data)
            current.block.clear()
        if current.keys:
            if self.round == 1:
                self.state.add_items(current.chunk_id, [key for _, key in current.keys])
            else:
                self.state.move_items(current.keys, current.chunk_id)
            current.keys.clear()

    def sync_all(self) -> None:
        for current in self.open.values():
            self.sync(current)

    def close(self, model: str) -> None:
        current = self.open.pop(model)
        self.sync(current)
        current.handle.close()
        self.state.update_chunk(current.chunk_id, status="written", lines=current.lines, bytes=current.size,
                                input_sha256=current.sha256.hexdigest())
        self.closed.append(current.chunk_id)

    def close_all(self) -> list[int]:
        for model in list(self.open):
            self.close(model)
        return self.closed


def write_chunks(state: BatchState, job_id: str, directory: str | os.PathLike[str],
                 rows: Iterable[Row] | Iterable[tuple[MinimaLlmRequest, str, str]],
                 limits: ChunkLimits) -> tuple[list[int], int, int]:
    """Write the unique requests of ``rows`` (:func:`keyed`'s rows, or :func:`keys_of`'s
    triples) into the input files of a new job.

    Returns (chunk ids, rows seen, unique prompts written). Duplicates are dropped in a window
    of a few thousand rows (exactly), and across windows by :class:`_Seen`, whose rare "maybe"
    is looked up in the state file's items. Items are recorded with each window's block,
    before their file is closed, so the state knows every line a file holds.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    writer, bodies = _Writer(state, job_id, folder, limits, 1), _Bodies()
    seen_before = _Seen(everything=bool(state.counts(job_id)))
    seen = unique = 0
    window: dict[str, tuple[Any, ...]] = {}

    def flush() -> int:
        written, maybe = 0, []
        for key, row in window.items():
            if seen_before.maybe(key):
                maybe.append(key)
                continue
            line = row[3] if len(row) > 3 else None
            writer.write(row[1], line if line is not None else bodies.line(key, row[0], row[1]), key)
            written += 1
        writer.sync_all()  # the window's items are in the state before a "maybe" is looked up
        if maybe:
            known = state.known(job_id, maybe)
            for key in maybe:
                if key not in known:
                    row = window[key]
                    line = row[3] if len(row) > 3 else None
                    writer.write(row[1], line if line is not None else bodies.line(key, row[0], row[1]), key)
                    written += 1
            writer.sync_all()
        window.clear()
        return written

    try:
        for row in rows:
            seen += 1
            window.setdefault(row[2], row)
            if len(window) >= _WINDOW:
                unique += flush()
        if window:
            unique += flush()
    finally:
        chunk_ids = writer.close_all()
    return chunk_ids, seen, unique


def read_lines(path: str | os.PathLike[str], block: int = 1 << 23) -> Iterator[bytes]:
    """The non-empty lines of a JSONL file (without their newline), streamed in blocks of 8 MB:
    one read per block, not per line, so a thread committing beside it does not hold up every read."""
    with open(path, "rb", buffering=0) as handle:
        rest = b""
        while True:
            data = handle.read(block)
            if not data:
                break
            lines = (rest + data if rest else data).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if line.strip():
                    yield line
        if rest.strip():
            yield rest


def request_of_line(line: bytes, request_id: str) -> tuple[MinimaLlmRequest, str]:
    """The request one of our input lines asks, and its model: the same cache key as the line's."""
    body = dict(json.loads(line)["body"])
    model, messages = body.pop("model"), body.pop("messages")
    temperature, max_tokens = body.pop("temperature", None), body.pop("max_tokens", None)
    return MinimaLlmRequest(request_id, messages, temperature, max_tokens, model, body or None), model


def reseeded(line: bytes, key: str, refresh_round: int, ramp: tuple[float, float]) -> bytes:
    """``line`` asked again as the live path's forced refresh asks: a new seed (and a temperature
    when it had none), so a deterministic server does not repeat a refused answer."""
    request, model = request_of_line(line, "refresh")
    return line_of(custom_id_of(key), encode(build_payload(request, model, refresh_round=refresh_round,
                                                           seed_base=int(key[:8], 16), ramp=ramp)))


def rewrite(state: BatchState, job_id: str, directory: str | os.PathLike[str],
            sources: dict[str, tuple[str, dict[str, tuple[int, str, int | None]]]], limits: ChunkLimits,
            round_: int, ramp: tuple[float, float] = (0.5, 5.0)) -> list[int]:
    """A new round: the lines named by ``sources`` (first input path -> (model, custom_id ->
    (the item's chunk, its cache key, its refresh round or None))), read from their first file.

    A line with a refresh round is :func:`reseeded`. The items move to their new chunk before
    it is marked ``written``: a chunk left ``writing`` by a crash is discarded on resume and its
    items re-queued again.
    """
    writer = _Writer(state, job_id, Path(directory), limits, round_)
    for path, (model, wanted) in sources.items():
        for line in read_lines(path):
            found = wanted.get(custom_id_in(line))
            if found is not None:
                chunk, key, refresh_round = found
                out = line + b"\n" if refresh_round is None else reseeded(line, key, refresh_round, ramp)
                writer.write(model, out, key, chunk)
        writer.sync_all()
    return writer.close_all()
