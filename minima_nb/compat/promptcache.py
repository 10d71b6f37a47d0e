"""``PromptCache``: minima-llm's key-value face on its own table, for code that used it directly.

minima-llm 0.2.8 exported ``PromptCache(db_path, read_only=False)`` with ``get``, ``get_row``,
``get_newest``, ``put`` and ``close`` over its table ``cache`` (keys are minima-llm's own
spelling, :func:`~minima_nb.cache.legacy.legacy_key`). This face keeps that API on the same
table, in the same file minima_nb's cache shares (``{cache_dir}/minima_llm.db``), so such code
and minima-llm itself keep reading what it writes. minima_nb's backend does not use it: its own
cache is :mod:`minima_nb.cache`, which reads this table on a miss.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cache import LEGACY_TABLE, read_legacy


@dataclass
class CacheRow:
    """One stored answer: its key, text, the server's body (or None) and when it was stored."""

    key: str
    text: str
    raw: dict[str, Any] | None
    created_at: float


class PromptCache:
    """minima-llm's SQLite prompt cache (WAL, safe across processes) at ``db_path``.

    ``read_only=True`` opens an existing file through a ``mode=ro`` URI and never writes or
    migrates it (a missing file is ``FileNotFoundError``, as in minima-llm).
    """

    def __init__(self, db_path: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.db_path = os.fspath(db_path)
        self.read_only = read_only
        if read_only:
            if not os.path.exists(self.db_path):
                raise FileNotFoundError(f"lookup cache not found: {self.db_path}")
            self._conn = sqlite3.connect(f"{Path(self.db_path).resolve().as_uri()}?mode=ro", uri=True,
                                         timeout=30.0)
            return
        self._conn = sqlite3.connect(self.db_path, timeout=30.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {LEGACY_TABLE} (key TEXT PRIMARY KEY, response_text TEXT NOT NULL, "
            "response_raw TEXT, created_at REAL NOT NULL)"
        )
        # 0.2.7's audit columns, added to an older table exactly as minima-llm adds them.
        existing = {row[1] for row in self._conn.execute(f"PRAGMA table_info({LEGACY_TABLE})")}
        for column in ("model", "canonical"):
            if column not in existing:
                self._conn.execute(f"ALTER TABLE {LEGACY_TABLE} ADD COLUMN {column} TEXT")
        self._conn.commit()

    def get(self, key: str) -> tuple[str, dict[str, Any] | None] | None:
        """``(text, raw)`` stored under ``key``, or None."""
        row = self.get_row(key)
        return None if row is None else (row.text, row.raw)

    def get_row(self, key: str) -> CacheRow | None:
        """The row stored under ``key`` with its timestamp, or None."""
        rows = read_legacy(self._conn, [key])
        return _row(rows[0]) if rows else None

    def get_newest(self, keys: Sequence[str]) -> CacheRow | None:
        """The newest row among ``keys`` (a tie goes to the earliest key given), or None."""
        rows = read_legacy(self._conn, list(keys))
        if not rows:
            return None
        order = {k: i for i, k in enumerate(keys)}
        return _row(max(rows, key=lambda r: (r[3], -order[r[0]])))

    def put(self, key: str, text: str, raw: Mapping[str, Any] | None, *, model: str | None = None,
            canonical: str | None = None, created_at: float | None = None) -> None:
        """Store ``text`` (and the server's body) under ``key``, replacing any row there."""
        if self.read_only:
            raise RuntimeError(f"cache is read-only: {self.db_path}")
        self._conn.execute(
            f"INSERT OR REPLACE INTO {LEGACY_TABLE} (key, response_text, response_raw, created_at, model, "
            "canonical) VALUES (?, ?, ?, ?, ?, ?)",
            (key, text, json.dumps(raw) if raw else None, time.time() if created_at is None else created_at,
             model, canonical),
        )
        self._conn.commit()

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()


def _row(row: tuple[str, str, str | None, float]) -> CacheRow:
    return CacheRow(key=row[0], text=row[1], raw=json.loads(row[2]) if row[2] else None,
                    created_at=float(row[3]))
