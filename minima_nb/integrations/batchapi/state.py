"""The batch jobs' state: one SQLite file, written before every remote call.

``{state_dir or cache_dir}/minima_batches.db`` holds, per job, its chunks (one chunk = one input
file = one remote batch) and its items (one per unique prompt: its cache key, from which the
line's ``custom_id`` is derived, the chunk it is in, its outcome). Each chunk row moves through

    written -> uploading -> uploaded -> creating -> submitted -> (terminal) -> ingested

and every arrow is committed *before* the call that follows it, so a process killed anywhere
leaves enough to resume: a chunk in ``creating`` may have a remote batch, found by its
``submission_id``; one with a ``batch_id`` is polled; one ``ingested`` is done. Rows are never
deleted. No API key is ever written here (the file holds ids, counts, statuses and keys of
the prompt cache, which are hashes).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ...errors import ConfigError

__all__ = ["CHUNK_FIELDS", "FINAL_JOB_STATES", "STATE_FILENAME", "BatchState", "state_path"]

STATE_FILENAME = "minima_batches.db"
FINAL_JOB_STATES = frozenset({"completed", "cancelled", "failed"})
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT PRIMARY KEY, prefix TEXT, fingerprint TEXT, state TEXT NOT NULL,
        base_url TEXT, endpoint TEXT, completion_window TEXT, rows INTEGER, prompts INTEGER,
        cancel_requested_at REAL, created_at REAL NOT NULL, updated_at REAL, finished_at REAL,
        note TEXT, answer_schema TEXT)""",
    "CREATE INDEX IF NOT EXISTS jobs_fingerprint ON jobs(fingerprint)",
    """CREATE TABLE IF NOT EXISTS chunks (
        chunk_id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, round INTEGER NOT NULL,
        model TEXT, path TEXT, lines INTEGER, bytes INTEGER, input_sha256 TEXT, status TEXT NOT NULL,
        file_id TEXT, submission_id TEXT, batch_id TEXT, remote_status TEXT, output_file_id TEXT,
        error_file_id TEXT, total INTEGER, completed INTEGER, failed INTEGER, polls INTEGER DEFAULT 0,
        lag_polls INTEGER DEFAULT 0, last_error TEXT, created_at REAL NOT NULL, updated_at REAL)""",
    "CREATE INDEX IF NOT EXISTS chunks_job ON chunks(job_id)",
    # One row per unique prompt of a job, keyed by its chunk: written a chunk at a time, in
    # order, so the rows of a new chunk are appended rather than scattered (a million-row job
    # writes its state at the speed of its files). The custom_id is derived from the key.
    """CREATE TABLE IF NOT EXISTS items (
        chunk_id INTEGER NOT NULL, cache_key TEXT NOT NULL, origin INTEGER, state TEXT NOT NULL DEFAULT 'queued',
        rounds INTEGER NOT NULL DEFAULT 1, status INTEGER, error_type TEXT, error TEXT,
        PRIMARY KEY (chunk_id, cache_key)) WITHOUT ROWID""",
)
CHUNK_FIELDS = ("chunk_id", "job_id", "round", "model", "path", "lines", "bytes", "input_sha256", "status",
                "file_id", "submission_id", "batch_id", "remote_status", "output_file_id", "error_file_id",
                "total", "completed", "failed", "polls", "lag_polls", "last_error", "created_at",
                "updated_at")
_JOB_FIELDS = ("job_id", "prefix", "fingerprint", "state", "base_url", "endpoint", "completion_window",
               "rows", "prompts", "cancel_requested_at", "created_at", "updated_at", "finished_at", "note",
               "answer_schema")
_IN_CHUNK = 500
_JOB_CHUNKS = "chunk_id IN (SELECT chunk_id FROM chunks WHERE job_id = ?)"
# The first layout keyed items by (job_id, custom_id): rows scattered over the whole table.
_MIGRATE_ITEMS = (
    "ALTER TABLE items RENAME TO items_v1",
    _SCHEMA[-1],
    "INSERT INTO items(chunk_id, cache_key, origin, state, rounds, status, error_type, error) "
    "SELECT chunk_id, cache_key, origin, state, rounds, status, error_type, error FROM items_v1",
    "DROP TABLE items_v1",
)


def state_path(config: Any) -> Path:
    """Where the state file of ``config`` lives: ``parasail.state_dir``, else ``cache_dir``."""
    directory = config.parasail.state_dir or config.cache_dir
    if not directory:
        raise ConfigError("provider batch jobs need a place for their state: set cache_dir (CACHE_DIR) "
                          "or parasail.state_dir (PARASAIL_STATE_DIR).")
    return Path(directory).expanduser() / STATE_FILENAME


class BatchState:
    """The state file; every method commits before it returns (safe to call from any thread)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA cache_size=-16384")  # 16 MB: items arrive in hash order, a bounded page cache helps
        with self._lock:
            for statement in _SCHEMA[:-1]:
                self._conn.execute(statement)
            if "answer_schema" not in {row[1] for row in self._conn.execute("PRAGMA table_info(jobs)")}:
                self._conn.execute("ALTER TABLE jobs ADD COLUMN answer_schema TEXT")  # a first-layout file
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(items)")}
            if "job_id" in columns:
                self._conn.execute("BEGIN IMMEDIATE")
                for statement in _MIGRATE_ITEMS:
                    self._conn.execute(statement)
                self._conn.execute("COMMIT")
            self._conn.execute(_SCHEMA[-1])

    @classmethod
    def of(cls, config: Any) -> BatchState:
        """The state file of ``config`` (see :func:`state_path`)."""
        return cls(state_path(config))

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"BatchState(path={str(self.path)!r})"

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany(sql, rows)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- jobs --

    def create_job(self, job_id: str, **fields: Any) -> None:
        """A new job in state ``preparing``."""
        now = time.time()
        values = {"job_id": job_id, "state": "preparing", "created_at": now, "updated_at": now, **fields}
        names = ", ".join(values)
        self._run(f"INSERT INTO jobs({names}) VALUES ({', '.join('?' * len(values))})", list(values.values()))

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Set fields of a job (and its ``updated_at``)."""
        fields["updated_at"] = time.time()
        sets = ", ".join(f"{name} = ?" for name in fields)
        self._run(f"UPDATE jobs SET {sets} WHERE job_id = ?", [*fields.values(), job_id])

    def job(self, job_id: str) -> dict[str, Any] | None:
        """The job's row, or None."""
        rows = self._run(f"SELECT {', '.join(_JOB_FIELDS)} FROM jobs WHERE job_id = ?", (job_id,))
        return dict(zip(_JOB_FIELDS, rows[0], strict=True)) if rows else None

    def jobs(self, prefix: str | None = None) -> list[dict[str, Any]]:
        """Every job (newest first), or those whose prefix starts with ``prefix``."""
        rows = self._run(f"SELECT {', '.join(_JOB_FIELDS)} FROM jobs ORDER BY created_at DESC")
        found = [dict(zip(_JOB_FIELDS, row, strict=True)) for row in rows]
        return [j for j in found if prefix is None or (j["prefix"] or "").startswith(prefix)]

    def find_job(self, fingerprint: str) -> str | None:
        """The newest job still running for this fingerprint (same prompts, same prefix), or None."""
        final = ", ".join(f"'{s}'" for s in FINAL_JOB_STATES)
        rows = self._run(f"SELECT job_id FROM jobs WHERE fingerprint = ? AND state NOT IN ({final}) "
                         "ORDER BY created_at DESC LIMIT 1", (fingerprint,))
        return rows[0][0] if rows else None

    # -- chunks --

    def add_chunk(self, job_id: str, round_: int, model: str, path: str, lines: int, size: int,
                  sha256: str) -> int:
        """Record a written input file; its chunk id."""
        now = time.time()
        with self._lock:
            cursor = self._conn.execute(
                "INSERT INTO chunks(job_id, round, model, path, lines, bytes, input_sha256, status, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'written', ?, ?)",
                (job_id, round_, model, path, lines, size, sha256, now, now))
            return int(cursor.lastrowid or 0)

    def update_chunk(self, chunk_id: int, **fields: Any) -> None:
        """Set fields of a chunk (and its ``updated_at``), committed at once."""
        fields["updated_at"] = time.time()
        sets = ", ".join(f"{name} = ?" for name in fields)
        self._run(f"UPDATE chunks SET {sets} WHERE chunk_id = ?", [*fields.values(), chunk_id])

    def chunks(self, job_id: str) -> list[dict[str, Any]]:
        """The job's chunks, oldest first."""
        rows = self._run(f"SELECT {', '.join(CHUNK_FIELDS)} FROM chunks WHERE job_id = ? ORDER BY chunk_id",
                         (job_id,))
        return [dict(zip(CHUNK_FIELDS, row, strict=True)) for row in rows]

    def chunk(self, chunk_id: int) -> dict[str, Any]:
        """One chunk's row."""
        rows = self._run(f"SELECT {', '.join(CHUNK_FIELDS)} FROM chunks WHERE chunk_id = ?", (chunk_id,))
        return dict(zip(CHUNK_FIELDS, rows[0], strict=True))

    def chunk_by_batch(self, batch_id: str) -> dict[str, Any] | None:
        """The chunk that owns a remote batch id, or None."""
        rows = self._run(f"SELECT {', '.join(CHUNK_FIELDS)} FROM chunks WHERE batch_id = ?", (batch_id,))
        return dict(zip(CHUNK_FIELDS, rows[0], strict=True)) if rows else None

    # -- items (one per unique prompt; the custom_id of a line is derived from its cache key) --

    def add_items(self, chunk_id: int, keys: Iterable[str]) -> None:
        """Record the cache keys of lines written into ``chunk_id`` as ``queued``."""
        self._many("INSERT INTO items(chunk_id, cache_key, origin) VALUES (?, ?, ?)",
                   ((chunk_id, key, chunk_id) for key in sorted(keys)))

    def known(self, job_id: str, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` the job already has."""
        found: set[str] = set()
        for start in range(0, len(keys), _IN_CHUNK):
            part = keys[start:start + _IN_CHUNK]
            rows = self._run(f"SELECT cache_key FROM items WHERE {_JOB_CHUNKS} AND cache_key IN "
                             f"({','.join('?' * len(part))})", (job_id, *part))
            found.update(r[0] for r in rows)
        return found

    def chunk_items(self, chunk_id: int) -> list[str]:
        """The cache keys of a chunk's items."""
        return [r[0] for r in self._run("SELECT cache_key FROM items WHERE chunk_id = ?", (chunk_id,))]

    def finish_chunk(self, chunk_id: int, outcomes: Iterable[tuple[Any, ...]],
                     rest: tuple[str, int | None, str | None, str | None] = ("done", 200, None, None)) -> None:
        """A chunk's outcomes in one transaction: ``(cache_key, state, status, error_type, error)``
        rows, then ``rest`` for every item of the chunk still ``queued`` (the answered ones: one
        statement for the common outcome instead of one per row)."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany(
                    "UPDATE items SET state = ?, status = ?, error_type = ?, error = ? "
                    "WHERE chunk_id = ? AND cache_key = ?",
                    ((state, status, kind, error, chunk_id, key) for key, state, status, kind, error in outcomes))
                self._conn.execute("UPDATE items SET state = ?, status = ?, error_type = ?, error = ? "
                                   "WHERE chunk_id = ? AND state = 'queued'", (*rest, chunk_id))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def items_in(self, job_id: str, state: str) -> list[tuple[str, int, int, int, str | None]]:
        """``(cache_key, chunk, first chunk, rounds, last error type)`` of the job's items in ``state``."""
        return self._run(f"SELECT cache_key, chunk_id, origin, rounds, error_type FROM items WHERE {_JOB_CHUNKS} "
                         "AND state = ?", (job_id, state))

    def requeued(self, job_id: str) -> list[tuple[str, int, int, int, str | None]]:
        """``(cache_key, chunk, first chunk, rounds, last error type)`` of the items waiting to be sent again."""
        return self.items_in(job_id, "requeue")

    def set_state(self, entries: Iterable[tuple[int, str]], state: str) -> None:
        """Move items ``(chunk, cache_key)`` to ``state`` (their last error kept)."""
        self._many("UPDATE items SET state = ? WHERE chunk_id = ? AND cache_key = ?",
                   ((state, chunk, key) for chunk, key in entries))

    def set_outcomes(self, rows: Iterable[tuple[int, str, str, int | None, str | None, str | None]]) -> None:
        """Outcomes ``(chunk, cache_key, state, status, error_type, error)``, in one transaction."""
        self._many("UPDATE items SET state = ?, status = ?, error_type = ?, error = ? "
                   "WHERE chunk_id = ? AND cache_key = ?",
                   ((state, status, kind, error, chunk, key) for chunk, key, state, status, kind, error in rows))

    def requeue_chunk(self, chunk_id: int) -> None:
        """Every unfinished item of a chunk back to ``requeue`` (its batch was lost or discarded)."""
        self._run("UPDATE items SET state = 'requeue' WHERE chunk_id = ? AND state = 'queued'", (chunk_id,))

    def give_up(self, entries: Iterable[tuple[int, str]]) -> None:
        """Re-queued items ``(chunk, cache_key)`` out of rounds: failed for good, with their last error."""
        self._many("UPDATE items SET state = 'failed' WHERE chunk_id = ? AND cache_key = ?", entries)

    def move_items(self, entries: Iterable[tuple[int, str]], chunk_id: int) -> None:
        """Put re-queued items ``(chunk, cache_key)`` into a new chunk, one round more."""
        self._many("UPDATE items SET chunk_id = ?, state = 'queued', rounds = rounds + 1 "
                   "WHERE chunk_id = ? AND cache_key = ?", ((chunk_id, old, key) for old, key in entries))

    def outcomes(self, job_id: str, keys: Sequence[str]) -> dict[str, tuple[str, int | None, str | None, str | None]]:
        """``cache key -> (state, status, error_type, error)`` for the job's items among ``keys``."""
        found: dict[str, tuple[str, int | None, str | None, str | None]] = {}
        for start in range(0, len(keys), _IN_CHUNK):
            part = keys[start:start + _IN_CHUNK]
            rows = self._run(f"SELECT cache_key, state, status, error_type, error FROM items WHERE {_JOB_CHUNKS} "
                             f"AND cache_key IN ({','.join('?' * len(part))})", (job_id, *part))
            found.update((r[0], tuple(r[1:])) for r in rows)
        return found

    def counts(self, job_id: str) -> dict[str, int]:
        """Items per state (``queued``, ``done``, ``failed``, ``requeue``...)."""
        return dict(self._run(f"SELECT state, COUNT(*) FROM items WHERE {_JOB_CHUNKS} GROUP BY state", (job_id,)))
