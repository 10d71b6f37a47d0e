"""Reads of the prompt cache file: read connections, texts in the keys' order, pages of rows.

:class:`~.store.PromptCache` reads through these on its per-thread connections (queued rows
and hit counts stay there); the export pages through the same queries. Nothing here writes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import operator
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .file import COLUMNS
from .writer import connect

__all__ = ["FIRST_ROWID", "READ_CHUNK", "page_rows", "page_sql", "read_connection", "rows_of_keys",
           "texts_in_order"]

READ_CHUNK = 500  # keys per ``IN (...)`` lookup; well under SQLite's variable limit

# Reader connections map the file (up to this many bytes) instead of copying each page through
# read(): measured, a quarter off a batched lookup of 100k keys. Address space, not memory.
_READ_MMAP_BYTES = 1 << 30
# One row per key of the JSON array bound, in the array's order: a LEFT JOIN keeps its left
# table (json_each, which walks the array in order) as the outer loop, and the key is unique,
# so each key gives exactly one row, its text or NULL. An ORDER BY would add a sort.
_TEXTS_IN_ORDER = "SELECT r.text FROM json_each(?) AS j LEFT JOIN responses AS r ON r.key = j.value"
_ORDERED_CHUNK = 5000  # keys per ordered read: a bound array of ~330 KB
_FIRST = operator.itemgetter(0)
_to_json = json.JSONEncoder(ensure_ascii=False).encode  # one shared encoder: it keeps no state

Query = Callable[[str, Sequence[Any]], list[Any]]


def read_connection(path: Path) -> sqlite3.Connection:
    """A connection for reads only (the writer thread has its own): file mapped, writes refused."""
    conn = connect(path)
    conn.execute(f"PRAGMA mmap_size={_READ_MMAP_BYTES}")
    conn.execute("PRAGMA query_only=1")  # a read path can never change the file by mistake
    return conn


def texts_in_order(query: Query, keys: list[str]) -> list[str | None]:
    """The stored text of each of ``keys`` (None for a miss), in their order, read by ``query``.

    With SQLite's JSON functions, one ``json_each`` join per 5,000 keys: no ``IN`` list to
    sort, no key read back, nothing to look up in Python. Without them, ``IN (...)`` reads.
    """
    if not _json_each_works():
        return _texts_keyed(query, keys)
    texts: list[str | None] = []
    for start in range(0, len(keys), _ORDERED_CHUNK):
        rows = query(_TEXTS_IN_ORDER, (_json_array(keys[start : start + _ORDERED_CHUNK]),))
        texts.extend(map(_FIRST, rows))
    return texts


def rows_of_keys(query: Query, select: str, keys: Sequence[str]) -> Iterator[list[Any]]:
    """The rows ``select`` (a ``SELECT ... FROM ...`` without its WHERE) finds among ``keys``,
    read ``WHERE key IN (...)`` ``READ_CHUNK`` keys at a time: one list of rows per query."""
    for start in range(0, len(keys), READ_CHUNK):
        chunk = keys[start : start + READ_CHUNK]
        yield query(f"{select} WHERE key IN ({','.join('?' * len(chunk))})", chunk)


def _texts_keyed(query: Query, keys: list[str]) -> list[str | None]:
    """:func:`texts_in_order` through ``IN (...)`` reads, for an SQLite built without JSON."""
    found: dict[str, str] = {}
    for rows in rows_of_keys(query, "SELECT key, text FROM responses", list(dict.fromkeys(keys))):
        found.update(rows)
    return list(map(found.get, keys))


def _json_array(keys: list[str]) -> str:
    """The JSON array of ``keys``, joined directly when no key needs escaping (cache keys are hex)."""
    body = '","'.join(keys)
    if keys and body.isprintable() and "\\" not in body and body.count('"') == 2 * (len(keys) - 1):
        return '["' + body + '"]'
    return _to_json(keys)


@functools.cache
def _json_each_works() -> bool:
    """Whether this process's SQLite has ``json_each`` (built in since 3.38; optional before)."""
    try:
        with contextlib.closing(sqlite3.connect(":memory:")) as conn:
            conn.execute("SELECT value FROM json_each('[1]')").fetchall()
    except sqlite3.OperationalError:
        return False
    return True


# -- pages of stored rows -----------------------------------------------------------------------

FIRST_ROWID = -(2**63)  # below every rowid: "after FIRST_ROWID" is from the start


def page_sql(where_sql: str, include_raw: bool) -> str:
    """The query of one page of stored rows ``(rowid, *COLUMNS)`` matching ``where_sql``.

    Its parameters: the rowid to start after, ``where_sql``'s own, and the page size; ``raw``
    is NULL unless ``include_raw``.
    """
    columns = ", ".join(c if include_raw or c != "raw" else "NULL" for c in COLUMNS)
    condition = f" AND ({where_sql})" if where_sql.strip() else ""
    return f"SELECT rowid, {columns} FROM responses WHERE rowid > ?{condition} ORDER BY rowid LIMIT ?"


def page_rows(query: Query, where_sql: str, params: Sequence[Any],
              chunk_size: int, include_raw: bool, limit: int | None = None,
              after: int = FIRST_ROWID) -> Iterator[list[tuple[Any, ...]]]:
    """Stored rows ``(rowid, *COLUMNS)`` after rowid ``after``, in insert order, in lists of up
    to ``chunk_size``.

    Pages by rowid, one short ``query(sql, params)`` per list, so no read stays open between
    lists; ``raw`` is NULL unless ``include_raw``; at most ``limit`` rows when given.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be at least 1.")
    sql = page_sql(where_sql, include_raw)
    last, left = after, limit
    while left is None or left > 0:
        size = chunk_size if left is None else min(chunk_size, left)
        rows = query(sql, (last, *params, size))
        if rows:
            last = rows[-1][0]
            yield rows
        left = None if left is None else left - len(rows)
        if len(rows) < size:
            return
