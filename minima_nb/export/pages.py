"""Stored cache rows as Arrow tables of the Parquet schema, a page at a time.

Exports spend most of their time turning SQLite rows into Arrow columns. Through ``sqlite3``
every cell becomes a Python object first (a dozen per row), which caps an export near 200k
rows/s on one core. The ADBC SQLite driver (``adbc-driver-sqlite``, a dependency) reads a page
straight into Arrow memory instead, about four times faster; this module uses it when it can
and falls back to ``sqlite3`` rows otherwise, page by page, with the same tables either way.

The driver infers each column's type from its first values, so a column that starts with NULLs
(``namespace`` usually does) would be typed wrong and fail at its first string. Every page
query therefore starts with one typing row of the right types, ``rowid`` = ``TYPING_ROWID``,
which is checked and dropped. Any driver error (not installed, a busy file, a cell of an
unexpected type written by another tool, text that is not UTF-8) sends the rest of the export
down the ``sqlite3`` path, which has its own busy retries and clear errors; the output does
not change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from ..cache import COLUMNS, FIRST_ROWID, page_rows, page_sql

__all__ = ["TYPING_ROWID", "arrow_pages", "rows_to_table"]

TYPING_ROWID = FIRST_ROWID  # below every real rowid, so it can never be a stored row's
_log = logging.getLogger(__name__)
_INTEGER_COLUMNS = {"input_tokens", "output_tokens"}
_REAL_COLUMNS = {"latency_s", "created_at"}


def _typing_row() -> str:
    values = [f"{TYPING_ROWID} AS rowid"]
    for name in COLUMNS:
        typed = "0" if name in _INTEGER_COLUMNS else "0.0" if name in _REAL_COLUMNS else "''"
        values.append(f"{typed} AS {name}")
    return f"SELECT {', '.join(values)}"


def _typed_column(values: Any, name: str, schema: pa.Schema) -> pa.Array | pa.ChunkedArray:
    target = schema.field(name).type
    if name == "created_at":  # epoch seconds -> UTC microseconds, vectorised
        seconds = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, pa.float64())
        micros = pc.round(pc.multiply(seconds.cast(pa.float64()), 1_000_000))
        return micros.cast(pa.int64()).cast(target)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.cast(target)
    return pa.array(values, target)


def rows_to_table(rows: Sequence[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    """``sqlite3`` rows ``(rowid, *COLUMNS)`` as a table of ``schema``; explicit types even when all null."""
    columns = list(zip(*rows, strict=True))[1:] if rows else [()] * len(COLUMNS)
    return pa.Table.from_arrays([_typed_column(values, name, schema) for name, values in zip(COLUMNS, columns, strict=True)],
                                schema=schema)


def _adbc_connect() -> Callable[[Path], Any] | None:
    try:
        import adbc_driver_sqlite.dbapi as adbc  # noqa: PLC0415  - optional speed-up, imported when used
    except ImportError:
        return None
    return lambda path: adbc.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro")


class _DriverPager:
    """Pages read by the ADBC driver: one short read-only connection and query per page."""

    def __init__(self, path: Path, where_sql: str, include_raw: bool, connect: Callable[[Path], Any]) -> None:
        self.path = path
        self.connect = connect
        # The typing row names and types the columns; the page's own query follows it unchanged.
        self.sql = f"{_typing_row()} UNION ALL SELECT * FROM ({page_sql(where_sql, include_raw)})"

    def page(self, after: int, params: Sequence[Any], size: int) -> pa.Table:
        """Up to ``size`` rows after rowid ``after``, typing row dropped; raises on any driver error."""
        conn = self.connect(self.path)
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(self.sql, (after, *params, size))
                table = cursor.fetch_arrow_table()
            finally:
                cursor.close()
        finally:
            conn.close()
        if table.num_rows == 0 or table.column(0)[0].as_py() != TYPING_ROWID:
            raise RuntimeError("the typing row did not come first")  # then sqlite3 takes over
        return table.slice(1)


def arrow_pages(path: Path, query: Callable[[str, Sequence[Any]], list[Any]], where_sql: str,
                params: Sequence[Any], chunk_size: int, include_raw: bool, schema: pa.Schema,
                before_page: Callable[[], Any] = lambda: None) -> Iterator[pa.Table]:
    """Matching rows as tables of ``schema`` (the Parquet columns) in rowid order, ``chunk_size`` each.

    ``query(sql, params)`` runs a ``sqlite3`` read: the fallback, and the path when the driver
    is missing. ``before_page`` runs before each driver read (the cache view commits queued rows
    there, as its ``query`` does).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be at least 1.")
    connect = _adbc_connect()
    pager = _DriverPager(path, where_sql, include_raw, connect) if connect is not None else None
    after = TYPING_ROWID
    while pager is not None:
        before_page()
        try:
            page = pager.page(after, params, chunk_size)
            table = pa.Table.from_arrays(
                [_typed_column(page.column(i + 1), name, schema) for i, name in enumerate(COLUMNS)], schema=schema)
            # The driver copies text bytes as they are; sqlite3 would refuse invalid UTF-8 with
            # a clear error, so such a page is left to it rather than written to the file.
            table.validate(full=True)
        except Exception as exc:  # noqa: BLE001  - any driver failure: sqlite3 reads the rest
            _log.info("export: the ADBC SQLite driver failed (%s); reading on with sqlite3", exc)
            break
        if page.num_rows:
            after = page.column(0)[-1].as_py()
            yield table
        if page.num_rows < chunk_size:
            return
    for rows in page_rows(query, where_sql, params, chunk_size, include_raw, after=after):  # on from where it broke
        yield rows_to_table(rows, schema)
