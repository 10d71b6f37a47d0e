"""The SQLite prompt cache: the file and its schema, stored rows, batched reads, queued writes.

One file, ``{cache_dir}/minima_llm.db``, in WAL mode so readers never wait for the writer and
several processes can share it. Reads run on the caller's thread (one connection per thread,
the file mapped, writes refused) and are batched: ``WHERE key IN (...)``, or for a column of
texts a ``json_each`` join that answers the keys in their order (``texts_of``). Writes never
run on the caller's thread: ``put()`` queues the row and a single daemon thread groups queued
rows into one transaction per batch, committing each row within about ``flush_interval_s``.
Rows hold the request (model, messages, params as JSON), the answer and its usage, so the file
can be inspected with any SQLite tool and exported. Only answers are stored: failures and ``None`` texts are refused, and nothing
here ever receives an API key.

Keys live in :mod:`.key`, the file's schema and opening in :mod:`.file`, the read queries in
:mod:`.reads` and the writer thread in :mod:`.writer`; the package (``minima_nb.cache``) gathers the names the rest of minima_nb uses.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import operator
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CacheError
from .file import CACHE_FILENAME, COLUMNS, open_file, prepare_directory
from .key import (
    string_messages_json,
)
from .reads import (
    FIRST_ROWID,
    READ_CHUNK,
    page_rows,
    page_sql,
    read_connection,
    rows_of_keys,
    texts_in_order,
)
from .writer import BatchWriter

__all__ = ["CacheRow", "CachedAnswer", "FIRST_ROWID", "PromptCache", "READ_CHUNK", "page_rows", "page_sql"]

_log = logging.getLogger(__name__)

_UPSERT = (
    f"INSERT INTO responses({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    f"ON CONFLICT(key) DO UPDATE SET {', '.join(f'{c}=excluded.{c}' for c in COLUMNS[1:])}"
)
_ANSWER_COLUMNS = "text, input_tokens, output_tokens, finish_reason, latency_s, model"


# -- rows ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheRow:
    """One stored answer with the request it answers; ``created_at=0`` means "now" when written.

    ``raw_json`` is ``raw`` already serialised (the body as the server sent it); when given it is
    stored as is, which spares encoding ``raw`` again for every answer.
    """

    key: str
    namespace: str | None
    model: str
    messages: list
    params: dict
    text: str
    raw: dict | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    latency_s: float | None = None
    created_at: float = 0.0
    raw_json: str | None = None


@dataclass(frozen=True)
class CachedAnswer:
    """What a lookup returns: the answer's small fields only (no raw body, no messages)."""

    text: str
    input_tokens: int | None
    output_tokens: int | None
    finish_reason: str | None
    latency_s: float | None
    model: str | None


_KEY_OF_ROW = operator.itemgetter(6)  # the key, last in a get_many_rows() row
# A row's values (COLUMNS order) as a get_many_rows() tuple: the answer's fields, then the key.
_ANSWER_ROW = operator.itemgetter(5, 7, 8, 9, 10, 2, 0)


def _keyed_rows(rows: list[tuple[Any, ...]]) -> Iterable[tuple[str, tuple[Any, ...]]]:
    return zip(map(_KEY_OF_ROW, rows), rows, strict=True)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):  # e.g. MappingProxyType in a frozen request
        return dict(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# What json.dumps(obj, ensure_ascii=False, default=_jsonable) builds on every call; one shared
# encoder (it keeps no state between calls) saves three constructions per stored row.
_to_json = json.JSONEncoder(ensure_ascii=False, default=_jsonable).encode


_json_string = json.encoder.encode_basestring  # the encoder's own escaper (ensure_ascii=False)


def _messages_json(messages: Any) -> str:
    """``_to_json(messages)``, spelled directly for the usual list of string dicts (one per answer)."""
    if type(messages) is list and len(messages) == 1:
        # The commonest request of all, one {"role", "content"} message in that order, spelled
        # without the general helper's loop (this runs once per stored answer).
        message = messages[0]
        if type(message) is dict and len(message) == 2 and next(iter(message)) == "role":
            role, content = message["role"], message.get("content")
            if type(role) is str and type(content) is str:
                return '[{"role": ' + _json_string(role) + ', "content": ' + _json_string(content) + "}]"
    spelled = string_messages_json(messages, canonical=False)
    return _to_json(messages) if spelled is None else spelled


def _row_from_db(values: Sequence[Any]) -> CacheRow:
    key, namespace, model, messages, params, text, raw, *rest = values
    return CacheRow(key, namespace, model, json.loads(messages or "[]"), json.loads(params or "{}"),
                    text, None if raw is None else json.loads(raw), *rest)


# -- the cache ----------------------------------------------------------------------------------

_OPEN_CACHES: weakref.WeakSet[PromptCache] = weakref.WeakSet()


class PromptCache:
    """The prompt cache of one directory: thread-safe reads, writes queued to one writer thread.

    Reads work from any thread (each thread gets its own connection). ``put`` never touches
    SQLite; rows are committed within about ``flush_interval_s``, or at once by ``flush()``.
    ``close()`` (also run at interpreter exit) commits what is queued.
    """

    def __init__(self, directory: str | os.PathLike[str], *, flush_interval_s: float = 0.05,
                 max_batch_rows: int = 2000) -> None:
        if flush_interval_s < 0 or max_batch_rows < 1:
            raise ValueError("flush_interval_s must be >= 0 and max_batch_rows >= 1.")
        directory = Path(directory).expanduser()
        prepare_directory(directory)
        self.path = directory / CACHE_FILENAME
        open_file(self.path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self._hits = 0
        self._misses = 0
        self._writer = BatchWriter(self.path, _UPSERT, flush_interval_s, max_batch_rows)
        # Rows put but not committed yet are read back from the writer's lots (BatchWriter.queued),
        # so that a prompt asked again straight after its answer arrived is a hit rather than a
        # second paid request; the answer object is only built if such a row is read (rare).
        _OPEN_CACHES.add(self)

    # -- reads ----------------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self._closed or self._pid != os.getpid():  # connections must not cross a fork
            state = "closed" if self._closed else "opened in another process"
            raise CacheError(f"the cache {str(self.path)!r} is {state}; open it again to read.")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = read_connection(self.path)
            with self._lock:
                self._connections.append(conn)
            self._local.conn = conn
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise CacheError(
                f"cannot read the cache {str(self.path)!r}: {exc}. If the file is damaged, move it "
                "away (the answers in it are lost) or pass another cache_dir (or set CACHE_DIR)."
            ) from None

    def count_misses(self, misses: int) -> None:
        """Count ``misses`` in :meth:`stats`: keys a caller looked up uncounted
        (``count_misses=False``), found nothing for, and now sends."""
        self._count(0, misses)

    def _count(self, hits: int, misses: int) -> None:
        with self._lock:
            self._hits += hits
            self._misses += misses

    def _pending_rows(self, keys: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        """Answers among ``keys`` queued for writing but not committed yet, as get_many_rows() tuples."""
        return {k: _ANSWER_ROW(values) for k, values in self._writer.queued_many(keys).items()}

    def get(self, key: str) -> CachedAnswer | None:
        """The cached answer for ``key``, or None."""
        queued = self._pending_rows((key,))
        if queued:
            self._count(1, 0)
            return CachedAnswer(*queued[key][:6])
        rows = self._query(f"SELECT {_ANSWER_COLUMNS} FROM responses WHERE key = ?", (key,))
        self._count(len(rows), 1 - len(rows))
        return CachedAnswer(*rows[0]) if rows else None

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedAnswer]:
        """The cached answers among ``keys`` (missing keys are absent), looked up 500 at a time."""
        return {key: CachedAnswer(*row[:6]) for key, row in self.get_many_rows(keys).items()}

    def get_many_rows(self, keys: Iterable[str], *, count_misses: bool = True) -> dict[str, tuple[Any, ...]]:
        """Like :meth:`get_many`, but each answer is the plain row tuple ``(text, input_tokens,
        output_tokens, finish_reason, latency_s, model, key)`` (CachedAnswer's fields, then the key).

        For bulk reads such as a re-run of 100k cached rows: it builds no object per row, which
        also spares the garbage collector a hundred thousand young objects to scan.
        ``count_misses=False`` leaves misses out of :meth:`stats` (for a caller that looks them
        up again before sending them).
        """
        return self._read_many(keys, f"{_ANSWER_COLUMNS}, key", _keyed_rows, count_misses)

    def get_texts(self, keys: Iterable[str], *, count_misses: bool = True) -> dict[str, str]:
        """The cached answer texts among ``keys``: :meth:`get_many_rows` reading the text alone."""
        return self._read_many(keys, "key, text", None, count_misses)

    def texts_of(self, keys: Sequence[str | None], *, count_misses: bool = True) -> list[str | None]:
        """The cached text of each of ``keys``, in their order: None for a miss or a None key.

        The bulk read of a re-run's column of texts. SQLite walks the keys in the order given
        and answers each with its text (``json_each`` joined to the table), so there is no
        ``IN`` list to sort, no key read back and no per-row lookup left to Python: measured,
        half the time of :meth:`get_texts` on 100k keys. Rows queued for writing are answered
        from memory. Each key counts in :meth:`stats`, a repeated one each time.
        """
        present: list[Any] = [k for k in keys if k is not None] if None in keys else list(keys)
        # Queued rows are taken before the file is read: one committed in between is in the file.
        queued = self._pending_rows(present)
        texts = texts_in_order(self._query, present)
        if queued:  # the newest answer of a key is the queued one
            texts = [queued[k][0] if k in queued else text for k, text in zip(present, texts, strict=True)]
        misses = texts.count(None)
        self._count(len(texts) - misses, misses if count_misses else 0)
        if len(present) == len(keys):
            return texts
        answers = iter(texts)  # back to the caller's positions: None keys stay None
        return [None if k is None else next(answers) for k in keys]

    def _read_many(
        self,
        keys: Iterable[str],
        columns: str,
        pairs_of: Callable[[list[tuple[Any, ...]]], Iterable[tuple[str, tuple[Any, ...]]]] | None,
        count_misses: bool,
    ) -> dict[str, Any]:
        """``{key: row}`` (``pairs_of`` given) or ``{key: text}`` for the stored ``keys``.

        Queued rows are answered from memory; the rest are read ``IN (...)`` 500 keys at a time.
        """
        unique = list(dict.fromkeys(keys))
        queued = self._pending_rows(unique)
        found = queued if pairs_of is not None else {k: row[0] for k, row in queued.items()}
        to_read = [k for k in unique if k not in found] if found else unique
        for rows in rows_of_keys(self._query, f"SELECT {columns} FROM responses", to_read):
            found.update(rows if pairs_of is None else pairs_of(rows))  # (key, text) rows are pairs
        self._count(len(found), len(unique) - len(found) if count_misses else 0)
        return found

    def get_with_raw(self, key: str) -> tuple[Any, ...] | None:
        """get()'s fields, then the stored body as text (or None), in one read; a miss is not
        counted in stats() (the caller's fallback lookup counts it)."""
        queued = self._writer.queued(key)
        rows = ([(*_ANSWER_ROW(queued)[:6], queued[6])] if queued is not None else
                self._query(f"SELECT {_ANSWER_COLUMNS}, raw FROM responses WHERE key = ?", (key,)))
        if rows:
            self._count(1, 0)
        return tuple(rows[0]) if rows else None

    def get_raw(self, key: str) -> dict | None:
        """The server's raw JSON body stored with ``key`` (or queued for storing), or None."""
        queued = self._writer.queued(key)
        rows = [(queued[6],)] if queued else self._query("SELECT raw FROM responses WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows and rows[0][0] is not None else None

    def count(self) -> int:
        """Number of stored answers (all processes)."""
        return self._query("SELECT COUNT(*) FROM responses")[0][0]

    def iter_rows(self, *, where_sql: str = "", params: Sequence[Any] = (), chunk_size: int = 10_000,
                  include_raw: bool = True) -> Iterator[list[CacheRow]]:
        """Yield stored rows in lists of up to ``chunk_size``, oldest insert first.

        ``where_sql`` is an SQL condition on the columns (``"model = ?"``) with positional
        ``params``. Each chunk is its own short query, so no read stays open between chunks.
        """
        for rows in page_rows(self._query, where_sql, params, chunk_size, include_raw):
            yield [_row_from_db(row[1:]) for row in rows]

    # -- writes ---------------------------------------------------------------------------------

    def put(self, row: CacheRow) -> None:
        """Queue ``row`` for writing (replacing any answer under its key); never waits for SQLite.

        Raises ValueError for a row without text, CacheError if an earlier write failed.
        """
        self.put_fields(row.key, row.namespace, row.model, row.messages, row.params, row.text, row.raw,
                        row.input_tokens, row.output_tokens, row.finish_reason, row.latency_s,
                        row.created_at, row.raw_json)

    def put_fields(self, key: str, namespace: str | None, model: str, messages: Any, params: dict | None,
                   text: str, raw: dict | None = None, input_tokens: int | None = None,
                   output_tokens: int | None = None, finish_reason: str | None = None,
                   latency_s: float | None = None, created_at: float = 0.0,
                   raw_json: str | None = None, params_json: str | None = None) -> None:
        """``put(CacheRow(...))`` with CacheRow's fields as arguments: the backend's path, which
        saves building a row object per answer. ``params_json``, when given, is ``params``
        already serialised (the backend reuses one per set of request fields), and ``params``
        may then be None."""
        # Validated and serialised here, on the caller's thread, so a bad row fails where it was made.
        if not isinstance(text, str):
            raise ValueError(f"cache row {key!r} has text={text!r}; only string answers are cached.")
        raw_text = raw_json if raw_json is not None else None if raw is None else _to_json(raw)
        values = (key, namespace, model, _messages_json(messages),
                  params_json if params_json is not None else _to_json(params), text, raw_text,
                  input_tokens, output_tokens, finish_reason, latency_s, created_at or time.time())
        self._writer.submit(key, values)  # readable at once, through the writer's staged lots

    def put_many(self, rows: list[tuple[Any, ...]]) -> None:
        """Queue already serialised rows (``COLUMNS`` order; messages, params and raw as JSON
        text) to be committed together in one transaction: the bulk path of a batch ingest.

        Unlike ``put``, the rows are not readable before they are committed: call ``flush()``.
        """
        for values in rows:
            if not isinstance(values[5], str):
                raise ValueError(f"cache row {values[0]!r} has text={values[5]!r}; only string answers are cached.")
        if rows:
            self._writer.submit_many(rows)

    def flush(self, timeout: float | None = 30.0) -> None:
        """Block until every row put so far is committed (CacheError after ``timeout`` seconds)."""
        self._writer.wait(timeout)

    async def aflush(self, timeout: float | None = 30.0) -> None:
        """``flush`` without blocking the event loop."""
        await asyncio.to_thread(self._writer.wait, timeout)

    def close(self, timeout: float | None = 60.0) -> None:
        """Commit queued rows, stop the writer, close the connections. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            connections, self._connections = self._connections, []
        _OPEN_CACHES.discard(self)
        try:
            self._writer.stop(timeout)
        finally:
            for conn in connections:
                conn.close()

    def __enter__(self) -> PromptCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Path, entries, size on disk (file + WAL), and this process's hits, misses and writes."""
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        with self._lock:
            hits, misses = self._hits, self._misses
        return {"path": str(self.path), "entries": self.count(), "file_size_bytes": size,
                "hits": hits, "misses": misses, "writes": self._writer.writes}

    def __repr__(self) -> str:
        entries = "closed" if self._closed else self.count()
        return f"PromptCache(path={str(self.path)!r}, entries={entries})"


@atexit.register
def _close_open_caches() -> None:
    # Runs before daemon threads are stopped, so queued rows still reach the file.
    for cache in list(_OPEN_CACHES):
        try:
            cache.close()
        except Exception as exc:  # noqa: BLE001  - at exit there is nobody left to raise to
            _log.warning("closing the prompt cache %s at exit failed: %s", cache.path, exc)
