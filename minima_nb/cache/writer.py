"""The prompt cache's one writer thread, and how the cache meets SQLite's lock.

``BatchWriter`` owns a daemon thread that commits staged rows (plain tuples of column values,
already validated by the caller) with one SQL statement. Rows are staged in lots under one
lock, without waking the thread per row; the thread takes every staged lot at once, within
``flush_interval_s`` of a lot's first row (or when it holds ``max_batch_rows``), and commits
each lot in one ``BEGIN IMMEDIATE`` transaction. Until then a staged row can be read back by
its key. It knows nothing of the schema: the caller passes the statement. ``connect`` and
``retry_when_busy`` are the connection settings and the "database is locked" retry that every
cache connection shares; a batch that still fails becomes a ``CacheError`` raised once to the
caller, and a dead thread makes every later call raise.
"""

from __future__ import annotations

import itertools
import logging
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable
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


class _Lot:
    """Rows handed to the writer together, committed in one transaction.

    A keyed lot gathers ``submit``'s rows by key (a key put twice keeps its last row, which is
    what the upsert would leave) and stays open to more rows until the writer takes it; a bulk
    lot is one ``submit_many`` call, closed at once. ``upto`` is the last sequence number in it.
    """

    __slots__ = ("keyed", "rows", "upto")

    def __init__(self, keyed: dict[str, _Values] | None, rows: list[_Values] | None, upto: int) -> None:
        self.keyed = keyed
        self.rows = rows
        self.upto = upto

    def values(self) -> list[_Values]:
        """The rows to write, in the order they were handed over."""
        return list(self.keyed.values()) if self.keyed is not None else self.rows or []


class BatchWriter:
    """The one thread that writes: rows are staged in lots, and each lot is one transaction.

    ``submit`` adds a row to the open lot under one lock and wakes nobody, except for the first
    row of a lot (the thread then waits ``flush_interval_s`` for more to gather) and the row
    that fills it to ``max_batch_rows``; the thread takes every lot staged in one go. Rows carry
    sequence numbers; ``done`` is the last one handled (committed or failed), which is what
    ``wait`` waits for. Until a keyed row is committed, ``queued`` finds it (read-your-writes).
    A failed lot is remembered and raised once by the next ``submit``/``wait``; if the thread
    itself dies, every later call raises.
    """

    def __init__(self, path: Path, statement: str, flush_interval_s: float, max_batch_rows: int) -> None:
        self._path = path
        self._statement = statement
        self._interval = flush_interval_s
        self._max_rows = max_batch_rows
        self._lock = threading.Lock()  # guards the lots and the counters below
        self._done_changed = threading.Condition(self._lock)
        self._open: dict[str, _Values] = {}  # the keyed lot rows are being added to
        self._closed: list[_Lot] = []  # lots handed over and not yet taken, in order
        self._writing: list[_Lot] = []  # lots taken by the thread and not yet committed
        self._work = threading.Event()  # "a lot is staged": the thread's wait for work
        self._now = threading.Event()  # "write now" (flush, stop, a full lot): ends the gathering wait
        self._submitted = 0
        self._done = 0
        self._stopping = False
        self._error: CacheError | None = None
        self._fatal: CacheError | None = None
        self.writes = 0
        self._thread = threading.Thread(target=self._run, name="minima-cache-writer", daemon=True)
        self._thread.start()

    def _refuse_if_closed(self) -> None:
        if self._stopping:
            raise CacheError(f"the cache {str(self._path)!r} is closed; open it again to write.")

    def submit(self, key: str, values: _Values) -> None:
        """Stage one serialised row under ``key``; raise the pending error first."""
        if self._error is not None or self._fatal is not None or not self._thread.is_alive():
            self.raise_pending()  # the usual case skips its lock
        with self._lock:
            self._refuse_if_closed()
            lot = self._open
            lot[key] = values
            self._submitted += 1
            if len(lot) == 1:
                self._work.set()  # the first row of a lot: the thread starts its gathering wait
            elif len(lot) >= self._max_rows:
                self._close_open_lot()
                self._now.set()

    def submit_many(self, rows: list[_Values]) -> None:
        """Stage many serialised rows as one lot, committed in one transaction of its own
        (however many, so a bulk load pays one commit)."""
        if self._error is not None or self._fatal is not None or not self._thread.is_alive():
            self.raise_pending()
        with self._lock:
            self._refuse_if_closed()
            self._close_open_lot()  # rows put before go first
            self._submitted += 1
            self._closed.append(_Lot(None, list(rows), self._submitted))
            self._work.set()

    def _close_open_lot(self) -> None:
        # Called with the lock held.
        if self._open:
            self._closed.append(_Lot(self._open, None, self._submitted))
            self._open = {}

    def queued(self, key: str) -> _Values | None:
        """The row staged under ``key`` and not committed yet (the newest), or None."""
        with self._lock:
            return self._queued(key)

    def queued_many(self, keys: Iterable[str]) -> dict[str, _Values]:
        """``queued`` for each of ``keys``: the staged rows among them."""
        with self._lock:
            if not (self._open or self._closed or self._writing):
                return {}  # the usual case: nothing staged, one look
            found = {}
            for key in keys:
                values = self._queued(key)
                if values is not None:
                    found[key] = values
            return found

    def _queued(self, key: str) -> _Values | None:
        # Newest first: the open lot, then the closed lots, then those being written.
        values = self._open.get(key)
        if values is not None:
            return values
        for lot in itertools.chain(reversed(self._closed), reversed(self._writing)):
            if lot.keyed is not None and (values := lot.keyed.get(key)) is not None:
                return values
        return None

    @property
    def done(self) -> int:
        """Sequence number of the last row handled (committed, or failed and reported)."""
        return self._done

    def wait(self, timeout: float | None) -> None:
        """Block until every row submitted so far is handled, then raise the pending error."""
        with self._lock:
            target = self._submitted
            if self._open or self._closed:  # rows not taken yet: the thread should not wait them out
                self._now.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done_changed:
            while self._done < target and self._thread.is_alive():
                left = 0.1 if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise CacheError(
                        f"{target - self._done} cache row(s) were not committed to {str(self._path)!r} "
                        f"within {timeout} s; another process may hold the database lock."
                    )
                self._done_changed.wait(min(left, 0.1))
        self.raise_pending()

    def stop(self, timeout: float | None) -> None:
        """Commit what is staged, end the thread, and raise any pending error."""
        with self._lock:
            self._stopping = True
            self._now.set()
            self._work.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise CacheError(f"the cache writer for {str(self._path)!r} did not finish within "
                             f"{timeout} s; rows still queued may be lost.")
        self.raise_pending()

    def raise_pending(self) -> None:
        """Raise the writer's death sticky, or a failed lot's error once."""
        if self._fatal is not None:
            raise self._fatal
        if not self._thread.is_alive() and not self._stopping:
            raise CacheError(f"the cache writer for {str(self._path)!r} is not running (was the process "
                             "forked after opening the cache?); open the cache again in this process.")
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        conn = None
        try:
            conn = connect(self._path)
            while True:
                self._work.wait()
                # The first row of a lot has come: give the lot the interval to fill, unless a
                # flush, a stop or a full lot asks for the write now.
                self._now.wait(self._interval)
                with self._lock:
                    self._work.clear()
                    self._now.clear()
                    self._close_open_lot()
                    lots, self._closed = self._closed, []
                    self._writing = list(lots)  # still found by queued() until committed
                    stop = self._stopping
                for lot in lots:
                    self._write(conn, lot)
                if stop:
                    return
        except BaseException as exc:  # noqa: BLE001  - reported to the user by the next put/flush
            self._fatal = CacheError(f"the cache writer for {str(self._path)!r} died: {exc!r}; "
                                     "rows queued since were not saved. Open the cache again.")
        finally:
            if conn is not None:
                conn.close()
            with self._done_changed:
                self._done_changed.notify_all()

    def _write(self, conn: sqlite3.Connection, lot: _Lot) -> None:
        error = None
        rows = lot.values()
        try:
            retry_when_busy(lambda: _commit(conn, self._statement, rows))
        except sqlite3.Error as exc:
            error = CacheError(f"could not write {len(rows)} row(s) to the cache {str(self._path)!r}: "
                               f"{exc}; those answers were not saved (check disk space and permissions).")
            _log.warning("%s", error)
        with self._done_changed:
            self._writing.remove(lot)  # committed (or lost): lookups read the file from now on
            self._done = lot.upto
            if error is None:
                self.writes += len(rows)
            else:
                self._error = error
            self._done_changed.notify_all()
