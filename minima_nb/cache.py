"""The SQLite prompt cache: cache keys, the file and its schema, batched reads, one writer thread.

One file, ``{cache_dir}/minima_llm.db``, in WAL mode so readers never wait for the writer and
several processes can share it. Reads run on the caller's thread (one connection per thread)
and are batched with ``WHERE key IN (...)``. Writes never run on the caller's thread: ``put()``
queues the row and a single daemon thread groups queued rows into one transaction per batch,
committing each row within about ``flush_interval_s``. Rows hold the request (model, messages,
params as JSON), the answer and its usage, so the file can be inspected with any SQLite tool
and exported. Only answers are stored: failures and ``None`` texts are refused, and nothing
here ever receives an API key.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import logging
import os
import queue
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import CacheError

CACHE_FILENAME = "minima_llm.db"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0  # SQLite's own wait for a lock, per statement
LOCK_RETRY_S = 120.0  # our retries on top of it, in total, before giving up
READ_CHUNK = 500  # keys per ``IN (...)`` lookup; well under SQLite's variable limit
_HELP = "pass another cache_dir (or set CACHE_DIR)"
_log = logging.getLogger(__name__)
_T = TypeVar("_T")

# MIGRATIONS[i] upgrades a file from version i to i + 1; each runs inside one transaction.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)",
        """CREATE TABLE responses (
            key TEXT PRIMARY KEY, namespace TEXT, model TEXT, messages TEXT, params TEXT,
            text TEXT NOT NULL, raw TEXT, input_tokens INTEGER, output_tokens INTEGER,
            finish_reason TEXT, latency_s REAL, created_at REAL)""",
        "CREATE INDEX responses_model ON responses(model)",
        "CREATE INDEX responses_created_at ON responses(created_at)",
    ),
]
assert len(MIGRATIONS) == SCHEMA_VERSION

COLUMNS = ("key", "namespace", "model", "messages", "params", "text", "raw", "input_tokens",
           "output_tokens", "finish_reason", "latency_s", "created_at")
_UPSERT = (
    f"INSERT INTO responses({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    f"ON CONFLICT(key) DO UPDATE SET {', '.join(f'{c}=excluded.{c}' for c in COLUMNS[1:])}"
)
_ANSWER_COLUMNS = "text, input_tokens, output_tokens, finish_reason, latency_s, model"


# -- keys ---------------------------------------------------------------------------------------


def normalise_numbers(obj: Any) -> Any:
    """Turn integral floats into ints (so ``0`` and ``0.0`` hash alike), tuples into lists, recursively."""
    if isinstance(obj, float):
        return int(obj) if obj.is_integer() else obj
    if isinstance(obj, Mapping):
        return {key: normalise_numbers(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [normalise_numbers(item) for item in obj]
    return obj  # bools, ints, strings, None


def canonical_json(obj: Any) -> str:
    """The one JSON spelling of ``obj``: numbers normalised, keys sorted, no spaces, UTF-8 kept."""
    return json.dumps(normalise_numbers(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(
    model: str,
    messages: Any,
    temperature: float | None,
    max_tokens: int | None,
    extra: Mapping[str, Any] | None,
    namespace: str | None = None,
) -> tuple[str, str]:
    """Return ``(sha256 hex, canonical JSON)`` of a request; an empty ``extra`` counts as ``None``.

    ``namespace`` joins the key only when set, so keys made without one never change.
    """
    payload: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "extra": extra if extra else None,  # {} and None send the same request
    }
    if namespace is not None:
        payload["namespace"] = namespace
    canonical = canonical_json(payload)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest(), canonical


class KeyTracer:
    """Appends one JSON line ``{"key", "canonical"}`` per cache key to a file (``MINIMA_TRACE_FILE``).

    Thread-safe; the file is opened on the first line, in append mode, line-buffered.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file: Any = None

    def trace(self, key: str, canonical: str) -> None:
        """Append the line for one key."""
        line = json.dumps({"key": key, "canonical": canonical}, ensure_ascii=False) + "\n"
        with self._lock:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            self._file.write(line)

    def close(self) -> None:
        """Close the file (a later ``trace`` opens it again)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


# -- rows ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheRow:
    """One stored answer with the request it answers; ``created_at=0`` means "now" when written."""

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


@dataclass(frozen=True)
class CachedAnswer:
    """What a lookup returns: the answer's small fields only (no raw body, no messages)."""

    text: str
    input_tokens: int | None
    output_tokens: int | None
    finish_reason: str | None
    latency_s: float | None
    model: str | None


def _to_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=_jsonable)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):  # e.g. MappingProxyType in a frozen request
        return dict(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _row_values(row: CacheRow) -> tuple[Any, ...]:
    """Validate and serialise a row on the caller's thread, so a bad row fails where it was made."""
    if not isinstance(row.text, str):
        raise ValueError(f"cache row {row.key!r} has text={row.text!r}; only string answers are cached.")
    raw = None if row.raw is None else _to_json(row.raw)
    return (row.key, row.namespace, row.model, _to_json(row.messages), _to_json(row.params),
            row.text, raw, row.input_tokens, row.output_tokens, row.finish_reason,
            row.latency_s, row.created_at or time.time())


def _row_from_db(values: Sequence[Any]) -> CacheRow:
    key, namespace, model, messages, params, text, raw, *rest = values
    return CacheRow(key, namespace, model, json.loads(messages or "[]"), json.loads(params or "{}"),
                    text, None if raw is None else json.loads(raw), *rest)


# -- the file -----------------------------------------------------------------------------------


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def _retry_when_busy(action: Callable[[], _T], budget_s: float = LOCK_RETRY_S) -> _T:
    """Run ``action``, retrying with a jittered backoff while another process holds the lock."""
    deadline = time.monotonic() + budget_s
    delay = 0.005
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay * random.uniform(0.5, 1.5))  # jitter keeps processes out of lockstep
        delay = min(delay * 2, 0.25)


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE by the writer.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _prepare_directory(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise CacheError(f"cache_dir {str(directory)!r} exists and is not a directory; {_HELP}.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create the cache directory {str(directory)!r} ({exc.strerror}); {_HELP}.") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CacheError(f"the cache directory {str(directory)!r} is not writable; {_HELP}.")


def _stored_version(conn: sqlite3.Connection, path: Path) -> int:
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "schema_version" in tables:
        return conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
    foreign = sorted(t for t in tables if not t.startswith("sqlite_"))
    if foreign:
        raise CacheError(
            f"{str(path)!r} is a SQLite database but not a minima_nb cache (it holds the tables "
            f"{', '.join(foreign)}); move that file away or {_HELP}."
        )
    return 0


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the file up to SCHEMA_VERSION in one transaction (a no-op when it is current)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _stored_version(conn, path)
        if version > SCHEMA_VERSION:
            raise CacheError(
                f"{str(path)!r} was written by a newer minima-nb (cache schema version {version}; this "
                f"version reads up to {SCHEMA_VERSION}); upgrade minima-nb (pip install -U minima-nb) or {_HELP}."
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[target - 1]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?, ?)", (target, time.time()))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _open_file(path: Path) -> None:
    """Create or check the cache file: WAL mode, current schema; sqlite errors become CacheErrors."""

    def attempt() -> None:
        conn = _connect(path)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            _migrate(conn, path)
        finally:
            conn.close()

    try:
        _retry_when_busy(attempt)
    except sqlite3.OperationalError as exc:
        raise CacheError(f"cannot open the cache {str(path)!r} for writing ({exc}); check that "
                         f"the directory is writable and the file not locked, or {_HELP}.") from None
    except sqlite3.DatabaseError as exc:
        raise CacheError(f"{str(path)!r} is not a SQLite database ({exc}), so not a minima_nb "
                         f"cache; move that file away or {_HELP}.") from None


# -- the writer thread --------------------------------------------------------------------------

_FLUSH = object()  # "commit what you have now"
_STOP = object()  # "commit what you have, then exit"


class _BatchWriter:
    """The one thread that writes: it groups queued rows into one transaction per batch.

    Rows carry a sequence number; ``done`` is the last one handled (committed or failed), which
    is what ``flush`` waits for. A failed batch is remembered and raised once by the next
    ``submit``/``wait``; if the thread itself dies, every later call raises.
    """

    def __init__(self, path: Path, flush_interval_s: float, max_batch_rows: int) -> None:
        self._path = path
        self._interval = flush_interval_s
        self._max_rows = max_batch_rows
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._submitted = 0
        self._done = 0
        self._stopping = False
        self._error: CacheError | None = None
        self._fatal: CacheError | None = None
        self.writes = 0
        self._thread = threading.Thread(target=self._run, name="minima-cache-writer", daemon=True)
        self._thread.start()

    def submit(self, values: tuple[Any, ...]) -> None:
        """Queue one serialised row; raise the pending error first, if any."""
        self.raise_pending()
        with self._cond:  # numbering and queueing together keep the queue in sequence order
            if self._stopping:
                raise CacheError(f"the cache {str(self._path)!r} is closed; open it again to write.")
            self._submitted += 1
            self._queue.put((self._submitted, values))

    def wait(self, timeout: float | None) -> None:
        """Block until every row submitted so far is handled, then raise the pending error."""
        with self._cond:
            target = self._submitted
            self._queue.put(_FLUSH)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._done < target and self._thread.is_alive():
                left = 0.1 if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise CacheError(
                        f"{target - self._done} cache row(s) were not committed to {str(self._path)!r} "
                        f"within {timeout} s; another process may hold the database lock."
                    )
                self._cond.wait(min(left, 0.1))
        self.raise_pending()

    def stop(self, timeout: float | None) -> None:
        """Commit what is queued, end the thread, and raise any pending error."""
        with self._cond:
            if not self._stopping:
                self._stopping = True
                self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise CacheError(f"the cache writer for {str(self._path)!r} did not finish within "
                             f"{timeout} s; rows still queued may be lost.")
        self.raise_pending()

    def raise_pending(self) -> None:
        """Raise the writer's death sticky, or a failed batch's error once."""
        if self._fatal is not None:
            raise self._fatal
        if not self._thread.is_alive() and not self._stopping:
            raise CacheError(f"the cache writer for {str(self._path)!r} is not running (was the process "
                             "forked after opening the cache?); open the cache again in this process.")
        with self._cond:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        conn = None
        try:
            conn = _connect(self._path)
            stop = False
            while not stop:
                batch, stop = self._gather()
                if batch:
                    self._write(conn, batch)
        except BaseException as exc:  # noqa: BLE001  - reported to the user by the next put/flush
            self._fatal = CacheError(f"the cache writer for {str(self._path)!r} died: {exc!r}; "
                                     "rows queued since were not saved. Open the cache again.")
        finally:
            if conn is not None:
                conn.close()
            with self._cond:
                self._cond.notify_all()

    def _gather(self) -> tuple[list[tuple[int, tuple[Any, ...]]], bool]:
        """Wait for a row, then collect more for up to ``flush_interval_s`` or ``max_batch_rows``."""
        item = self._queue.get()
        batch: list[tuple[int, tuple[Any, ...]]] = []
        deadline = time.monotonic() + self._interval
        while True:
            if item is _STOP or item is _FLUSH:
                return batch, item is _STOP
            batch.append(item)
            if len(batch) >= self._max_rows:
                return batch, False
            left = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                return batch, False

    def _write(self, conn: sqlite3.Connection, batch: list[tuple[int, tuple[Any, ...]]]) -> None:
        error = None
        try:
            _retry_when_busy(lambda: _commit(conn, [values for _, values in batch]))
        except sqlite3.Error as exc:
            error = CacheError(f"could not write {len(batch)} row(s) to the cache {str(self._path)!r}: "
                               f"{exc}; those answers were not saved (check disk space and permissions).")
            _log.warning("%s", error)
        with self._cond:
            self._done = batch[-1][0]
            if error is None:
                self.writes += len(batch)
            else:
                self._error = error
            self._cond.notify_all()


def _commit(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    # BEGIN IMMEDIATE takes the write lock up front (waiting up to the busy timeout), so the
    # transaction can never fail half-way with a lock upgrade error.
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_UPSERT, rows)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


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
        _prepare_directory(directory)
        self.path = directory / CACHE_FILENAME
        _open_file(self.path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self._hits = 0
        self._misses = 0
        self._writer = _BatchWriter(self.path, flush_interval_s, max_batch_rows)
        _OPEN_CACHES.add(self)

    # -- reads ----------------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self._closed or self._pid != os.getpid():  # connections must not cross a fork
            state = "closed" if self._closed else "opened in another process"
            raise CacheError(f"the cache {str(self.path)!r} is {state}; open it again to read.")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            with self._lock:
                self._connections.append(conn)
            self._local.conn = conn
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise CacheError(f"cannot read the cache {str(self.path)!r}: {exc}.") from None

    def _count(self, hits: int, misses: int) -> None:
        with self._lock:
            self._hits += hits
            self._misses += misses

    def get(self, key: str) -> CachedAnswer | None:
        """The cached answer for ``key``, or None."""
        rows = self._query(f"SELECT {_ANSWER_COLUMNS} FROM responses WHERE key = ?", (key,))
        self._count(len(rows), 1 - len(rows))
        return CachedAnswer(*rows[0]) if rows else None

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedAnswer]:
        """The cached answers among ``keys`` (missing keys are absent), looked up 500 at a time."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, CachedAnswer] = {}
        for start in range(0, len(unique), READ_CHUNK):
            chunk = unique[start : start + READ_CHUNK]
            sql = f"SELECT key, {_ANSWER_COLUMNS} FROM responses WHERE key IN ({','.join('?' * len(chunk))})"
            for key, *answer in self._query(sql, chunk):
                found[key] = CachedAnswer(*answer)
        self._count(len(found), len(unique) - len(found))
        return found

    def get_raw(self, key: str) -> dict | None:
        """The server's raw JSON body stored with ``key``, or None."""
        rows = self._query("SELECT raw FROM responses WHERE key = ?", (key,))
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
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be at least 1.")
        columns = ", ".join(c if include_raw or c != "raw" else "NULL" for c in COLUMNS)
        condition = f" AND ({where_sql})" if where_sql.strip() else ""
        sql = f"SELECT rowid, {columns} FROM responses WHERE rowid > ?{condition} ORDER BY rowid LIMIT ?"
        last = -(2**63)
        while True:
            rows = self._query(sql, (last, *params, chunk_size))
            if rows:
                last = rows[-1][0]
                yield [_row_from_db(row[1:]) for row in rows]
            if len(rows) < chunk_size:
                return

    # -- writes ---------------------------------------------------------------------------------

    def put(self, row: CacheRow) -> None:
        """Queue ``row`` for writing (replacing any answer under its key); never waits for SQLite.

        Raises ValueError for a row without text, CacheError if an earlier write failed.
        """
        self._writer.submit(_row_values(row))

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
