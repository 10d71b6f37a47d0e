"""The prompt cache's file: where it lives, its schema and migrations, and how it is opened.

``{cache_dir}/minima_llm.db`` holds a ``schema_version`` table and the ``responses`` table
(and, in a directory minima-llm 0.2.x wrote, its table ``cache``, left as it is: :mod:`.legacy`);
``MIGRATIONS[i]`` upgrades a file from version ``i`` to ``i + 1`` inside one transaction, so a
file written by an older minima-nb is brought up to date in place and one written by a newer
one is refused with a message saying what to do. Every failure to open is a ``CacheError``
that names the path and the way out (another ``cache_dir``, moving a damaged file away).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from ..errors import CacheError
from .legacy import LEGACY_TABLE, is_legacy_table
from .writer import connect, retry_when_busy

__all__ = ["CACHE_FILENAME", "COLUMNS", "HELP", "MIGRATIONS", "SCHEMA_VERSION", "open_file",
           "prepare_directory"]

CACHE_FILENAME = "minima_llm.db"
SCHEMA_VERSION = 1
HELP = "pass another cache_dir (or set CACHE_DIR)"

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


def prepare_directory(directory: Path) -> None:
    """Create ``directory`` if needed; a CacheError when it is a file or cannot be written."""
    if directory.exists() and not directory.is_dir():
        raise CacheError(f"cache_dir {str(directory)!r} exists and is not a directory; {HELP}.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create the cache directory {str(directory)!r} ({exc.strerror}); {HELP}.") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CacheError(f"the cache directory {str(directory)!r} is not writable; {HELP}.")


def _stored_version(conn: sqlite3.Connection, path: Path) -> int:
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "schema_version" in tables:
        return conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
    # minima-llm's own table may share the file (same file name): it is kept, beside ours, as is.
    foreign = sorted(t for t in tables if not t.startswith("sqlite_")
                     and not (t == LEGACY_TABLE and is_legacy_table(conn)))
    if foreign:
        raise CacheError(
            f"{str(path)!r} is a SQLite database but not a minima_nb cache (it holds the tables "
            f"{', '.join(foreign)}); move that file away or {HELP}."
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
                f"version reads up to {SCHEMA_VERSION}); upgrade minima-nb (pip install -U minima-nb) or {HELP}."
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


def open_file(path: Path) -> None:
    """Create or check the cache file: WAL mode, current schema; sqlite errors become CacheErrors."""

    def attempt() -> None:
        conn = connect(path)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            _migrate(conn, path)
        finally:
            conn.close()

    try:
        retry_when_busy(attempt)
    except sqlite3.OperationalError as exc:
        raise CacheError(f"cannot open the cache {str(path)!r} for writing ({exc}); check that "
                         f"the directory is writable and the file not locked, or {HELP}.") from None
    except sqlite3.DatabaseError as exc:
        raise CacheError(f"{str(path)!r} is not a SQLite database ({exc}), so not a minima_nb "
                         f"cache; move that file away or {HELP}.") from None
