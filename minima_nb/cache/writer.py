"""The prompt cache's one writer thread, and how the cache meets SQLite's lock.

``BatchWriter`` owns a daemon thread that takes queued rows (plain tuples of column values,
already validated by the caller) and commits them with one SQL statement, grouped into one
``BEGIN IMMEDIATE`` transaction per batch of up to ``max_batch_rows`` or ``flush_interval_s``.
It knows nothing of the schema: the caller passes the statement. ``connect`` and
``retry_when_busy`` are the connection settings and the "database is locked" retry that every
cache connection shares; a batch that still fails becomes a ``CacheError`` raised once to the
caller, and a dead thread makes every later call raise.
"""

from __future__ import annotations

import logging
import queue
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import CacheError

BUSY_TIMEOUT_S = 30.0  # SQLite's own wait for a lock, per statement
LOCK_RETRY_S = 120.0  # our retries on top of it, in total, before giving up
_log = logging.getLogger(__name__)
_T = TypeVar("_T")

_Values = tuple[Any, ...]  # one row's column values, in the statement's parameter order


# -- the lock -----------------------------------------------------------------------------------


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` means another connection holds the lock (as opposed to a real failure)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None and sys.version_info >= (3, 11):  # the error-code constants are 3.11+ too
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def retry_when_busy(action: Callable[[], _T], budget_s: float = LOCK_RETRY_S) -> _T:
    """Run ``action``, retrying with a jittered backoff while another process holds the lock."""
    deadline = time.monotonic() + budget_s
    delay = 0.005
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay * random.uniform(0.5, 1.5))  # jitter keeps processes out of lockstep
        delay = min(delay * 2, 0.25)


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the cache file with the settings every cache connection shares."""
    # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE by the writer.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _commit(conn: sqlite3.Connection, statement: str, rows: list[_Values]) -> None:
    # BEGIN IMMEDIATE takes the write lock up front (waiting up to the busy timeout), so the
    # transaction can never fail half-way with a lock upgrade error.
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(statement, rows)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# -- the writer thread --------------------------------------------------------------------------

_FLUSH = object()  # "commit what you have now"
_STOP = object()  # "commit what you have, then exit"


class _Bulk(list[Any]):
    """Rows queued together by ``submit_many``: committed as one transaction of their own."""


class BatchWriter:
    """The one thread that writes: it groups queued rows into one transaction per batch.

    Each row is run through ``statement`` (an SQL statement with one ``?`` per value). Rows
    carry a sequence number; ``done`` is the last one handled (committed or failed), which is
    what ``wait`` waits for. A failed batch is remembered and raised once by the next
    ``submit``/``wait``; if the thread itself dies, every later call raises.
    """

    def __init__(self, path: Path, statement: str, flush_interval_s: float, max_batch_rows: int) -> None:
        self._path = path
        self._statement = statement
        self._interval = flush_interval_s
        self._max_rows = max_batch_rows
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._wake = threading.Event()  # "a flush or stop is queued": ends the wait in _gather
        self._cond = threading.Condition()
        self._submitted = 0
        self._done = 0
        self._stopping = False
        self._error: CacheError | None = None
        self._fatal: CacheError | None = None
        self.writes = 0
        self._held: Any = None  # a bulk lot taken from the queue while a batch was being gathered
        self._thread = threading.Thread(target=self._run, name="minima-cache-writer", daemon=True)
        self._thread.start()

    def submit(self, values: _Values) -> int:
        """Queue one serialised row and return its sequence number; raise the pending error first."""
        if self._error is not None or self._fatal is not None or not self._thread.is_alive():
            self.raise_pending()  # the usual case skips its lock
        with self._cond:  # numbering and queueing together keep the queue in sequence order
            if self._stopping:
                raise CacheError(f"the cache {str(self._path)!r} is closed; open it again to write.")
            self._submitted += 1
            self._queue.put((self._submitted, values))
            return self._submitted

    def submit_many(self, rows: list[_Values]) -> int:
        """Queue many serialised rows as one item, committed in one transaction of their own
        (however many, so a bulk load pays one commit); the sequence number of the lot."""
        if self._error is not None or self._fatal is not None or not self._thread.is_alive():
            self.raise_pending()
        with self._cond:
            if self._stopping:
                raise CacheError(f"the cache {str(self._path)!r} is closed; open it again to write.")
            self._submitted += 1
            self._queue.put((self._submitted, _Bulk(rows)))
            return self._submitted

    @property
    def done(self) -> int:
        """Sequence number of the last row handled (committed, or failed and reported)."""
        return self._done

    def wait(self, timeout: float | None) -> None:
        """Block until every row submitted so far is handled, then raise the pending error."""
        with self._cond:
            target = self._submitted
            self._queue.put(_FLUSH)
        self._wake.set()
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
        self._wake.set()
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
            conn = connect(self._path)
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

    def _gather(self) -> tuple[list[tuple[int, _Values]], bool]:
        """Wait for a row, then collect more for up to ``flush_interval_s`` or ``max_batch_rows``.

        Rows queued meanwhile are taken in one go after the interval: ``submit`` does not wake
        this thread (a wake-up per row would cost the answering thread a GIL hand-over each
        time), only ``wait``/``stop`` do, through ``_wake``.
        """
        item, self._held = self._held or self._queue.get(), None
        batch: list[tuple[int, _Values]] = []
        deadline = time.monotonic() + self._interval
        while True:
            if item is _STOP or item is _FLUSH:
                return batch, item is _STOP
            if type(item[1]) is _Bulk:  # a lot of its own: what was gathered first goes first
                if batch:
                    self._held = item
                    return batch, False
                return [item], False
            batch.append(item)
            if len(batch) >= self._max_rows:
                return batch, False
            item = self._next_before(deadline)
            if item is None:
                return batch, False

    def _next_before(self, deadline: float) -> Any:
        """The next queued item, waiting until ``deadline`` (or a flush/stop) for one; None if none came."""
        while True:
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._wake.wait(left)
            self._wake.clear()

    def _write(self, conn: sqlite3.Connection, batch: list[tuple[int, _Values]]) -> None:
        error = None
        rows = batch[0][1] if type(batch[0][1]) is _Bulk else [values for _, values in batch]
        try:
            retry_when_busy(lambda: _commit(conn, self._statement, rows))
        except sqlite3.Error as exc:
            error = CacheError(f"could not write {len(rows)} row(s) to the cache {str(self._path)!r}: "
                               f"{exc}; those answers were not saved (check disk space and permissions).")
            _log.warning("%s", error)
        with self._cond:
            self._done = batch[-1][0]
            if error is None:
                self.writes += len(rows)
            else:
                self._error = error
            self._cond.notify_all()
