"""Cache as data: the prompt cache as a pandas DataFrame or a Parquet file, and back again.

``open_cache(dir)`` (or ``view(backend)``) gives a :class:`CacheView` of one cache file, with
``to_pandas``, ``to_parquet``, ``from_parquet``, ``stats``, ``count`` and ``delete``. Every one of
them takes the same filters: ``model`` and ``namespace`` (a name or a list of names), ``since``
(inclusive) and ``until`` (exclusive) as a datetime, date, ISO 8601 string or pandas Timestamp,
naive meaning UTC. Exports and imports stream in chunks, so memory stays flat however large the
cache; an export goes to a temporary file renamed into place at the end, so an interrupted
export never leaves a half-written file under the final name.

The Parquet schema (the columns, their types, the file metadata and what an import needs) is
``parquetschema.PARQUET_SCHEMA``, documented there. The API key is never stored in the cache,
so it cannot reach an export.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Literal, TypeVar

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .._version import __version__
from ..cache import CACHE_FILENAME, COLUMNS, PromptCache, connect, page_rows, retry_when_busy
from ..errors import CacheError
from .pages import arrow_pages, rows_to_table
from .schema import (
    PARQUET_SCHEMA,
    PARQUET_SCHEMA_VERSION,
    REQUIRED_COLUMNS,
    batch_rows,
    check_parquet,
)

__all__ = ["PARQUET_SCHEMA", "PARQUET_SCHEMA_VERSION", "REQUIRED_COLUMNS", "CacheView", "check_parquet",
           "open_cache", "to_epoch", "view"]

AUTO_PROGRESS_ROWS = 100_000  # progress=None shows a bar past this many rows
_PANDAS_TYPES = {pa.int64(): pd.Int64Dtype()}  # nullable ints instead of floats with NaN
_KEY, _TEXT = COLUMNS.index("key"), COLUMNS.index("text")
_T = TypeVar("_T")
Names = str | Sequence[str] | None
When = dt.datetime | dt.date | str | float | None

# -- merge statements: "keep" inserts new keys only; "replace" then updates rows whose answer differs.
_COLS, _MARKS = ", ".join(COLUMNS), ", ".join("?" * len(COLUMNS))
_INSERT_NEW = f"INSERT INTO responses({_COLS}) VALUES ({_MARKS}) ON CONFLICT(key) DO NOTHING"
# A file exported without raw bodies never erases the raw body stored for the same answer.
_RAW = "CASE WHEN excluded.raw IS NULL AND excluded.text IS responses.text THEN responses.raw ELSE excluded.raw END"
_CONTENT = [c for c in COLUMNS if c not in ("key", "raw", "created_at")]  # created_at alone is no change
_REPLACE_CHANGED = (
    f"INSERT INTO responses({_COLS}) VALUES ({_MARKS}) ON CONFLICT(key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:] if c != "raw") + f", raw = {_RAW} "
    + f"WHERE ({', '.join('responses.' + c for c in _CONTENT)}) IS NOT "
    + f"({', '.join('excluded.' + c for c in _CONTENT)}) OR ({_RAW}) IS NOT responses.raw"
)


# -- filters ------------------------------------------------------------------------------------


def to_epoch(value: When, name: str = "time") -> float:
    """Seconds since the epoch of a datetime, date, ISO 8601 string or Timestamp (naive = UTC)."""
    original = value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):  # Python 3.10's fromisoformat does not read a trailing "Z"
            text = text[:-1] + "+00:00"
        try:
            value = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{name}={original!r} is not a date or time; use ISO 8601, e.g. "
                             "2024-05-01 or 2024-05-01T12:00:00Z.") from None
    if isinstance(value, dt.datetime):  # pandas Timestamps are datetimes too
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc).timestamp()
    raise TypeError(f"{name} must be a datetime, date, ISO string or Timestamp, not {type(original).__name__}.")


def _where(model: Names, namespace: Names, since: When, until: When) -> tuple[str, list[Any]]:
    """An SQL condition (empty for "everything") and its parameters for the shared filters."""
    clauses: list[str] = []
    params: list[Any] = []
    for column, names in (("model", model), ("namespace", namespace)):
        if names is None:
            continue
        values = [names] if isinstance(names, str) else list(names)
        clauses.append(f"{column} IN ({', '.join('?' * len(values))})" if values else "0")
        params += values
    for column, op, value in (("since", ">=", since), ("until", "<", until)):
        if value is not None:
            clauses.append(f"created_at {op} ?")
            params.append(to_epoch(value, column))
    return " AND ".join(clauses), params


# -- SQLite -------------------------------------------------------------------------------------


def _sqlite(path: Path, action: Callable[[sqlite3.Connection], _T], *, write: bool = False) -> _T:
    """Run ``action`` on a fresh connection (in one write transaction if ``write``), retrying when busy."""

    def attempt() -> _T:
        if not write:
            return action(conn)
        conn.execute("BEGIN IMMEDIATE")  # take the write lock up front, as the cache writer does
        try:
            result = action(conn)
            conn.execute("COMMIT")
            return result
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    try:
        conn = connect(path)
        try:
            return retry_when_busy(attempt)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise CacheError(f"cannot {'write' if write else 'read'} the cache {str(path)!r}: {exc}.") from None


def _merge(values: list[tuple[Any, ...]], replace: bool, conn: sqlite3.Connection) -> tuple[int, int]:
    """Insert new keys (and with ``replace`` update changed answers); return (inserted, replaced)."""
    before = conn.total_changes
    conn.executemany(_INSERT_NEW, values)
    inserted = conn.total_changes - before
    if replace:
        conn.executemany(_REPLACE_CHANGED, values)
    return inserted, conn.total_changes - before - inserted


# -- Arrow --------------------------------------------------------------------------------------


def _write_overlapped(writer: pq.ParquetWriter, tables: Iterator[pa.Table], on_written: Callable[[int], Any]) -> int:
    """Write ``tables`` in order, each while the next is read and converted; returns the row count.

    Parquet encoding and zstd release the GIL, so one writer thread overlaps them with the
    SQLite reads; a failed write is raised here, after which nothing more is written.
    """
    rows = 0
    with ThreadPoolExecutor(1, thread_name_prefix="minima-export") as pool:
        pending: Future[None] | None = None
        try:
            for table in tables:
                if pending is not None:
                    pending.result()
                pending = pool.submit(writer.write_table, table)
                rows += table.num_rows
                on_written(table.num_rows)
            if pending is not None:
                pending.result()
        finally:  # never let the writer close under a write still running
            if pending is not None:
                wait([pending])
    return rows


def _progress(total: int | None, progress: bool | None, label: str) -> Any:
    """A tqdm.auto bar when asked for, or by default past AUTO_PROGRESS_ROWS rows; else a silent one."""
    from tqdm.auto import tqdm  # only the edges draw

    show = progress is True or (progress is None and (total or 0) > AUTO_PROGRESS_ROWS)
    return tqdm(total=total, desc=label, unit="rows", disable=not show)


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="seconds")


# -- the view -----------------------------------------------------------------------------------


class CacheView:
    """The rows of one prompt cache as data: DataFrame, Parquet, stats, import, delete.

    Get one with :func:`open_cache`, :func:`view` or :meth:`from_cache`. Each call opens its own
    short-lived SQLite connection, so a view works from any thread; rows the cache has queued
    but not yet committed are flushed first, so the view sees them.
    """

    def __init__(self, cache: PromptCache, *, owns_cache: bool = False) -> None:
        self._cache = cache
        self._owns_cache = owns_cache
        self.path = cache.path

    @classmethod
    def from_cache(cls, cache: PromptCache) -> CacheView:
        """A view of an open PromptCache (e.g. ``backend.cache``); closing the view leaves it open."""
        return cls(cache)

    def close(self) -> None:
        """Close the cache if this view opened it (``open_cache``); safe to call twice."""
        if self._owns_cache:
            self._cache.close()

    def __enter__(self) -> CacheView:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CacheView(path={str(self.path)!r})"

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self._cache.flush()
        return _sqlite(self.path, lambda conn: conn.execute(sql, params).fetchall())

    def _tables(self, where: str, params: list[Any], chunk_size: int, include_raw: bool,
                limit: int | None = None) -> Iterator[pa.Table]:
        """Matching rows as PARQUET_SCHEMA tables of up to ``chunk_size``; one short query each."""
        if limit is None:  # the fast path (see arrowpages); it reads whole pages
            return arrow_pages(self.path, self._read, where, params, chunk_size, include_raw,
                               PARQUET_SCHEMA, before_page=self._cache.flush)
        pages = page_rows(self._read, where, params, chunk_size, include_raw, limit)
        return (rows_to_table(rows, PARQUET_SCHEMA) for rows in pages)

    def count(self, *, model: Names = None, namespace: Names = None, since: When = None,
              until: When = None) -> int:
        """Number of stored answers matching the filters."""
        where, params = _where(model, namespace, since, until)
        return self._read("SELECT COUNT(*) FROM responses" + (f" WHERE {where}" if where else ""), params)[0][0]

    def to_pandas(self, *, model: Names = None, namespace: Names = None, since: When = None,
                  until: When = None, include_raw: bool = False, limit: int | None = None) -> pd.DataFrame:
        """The matching rows as a DataFrame with the Parquet schema's columns (oldest insert first).

        JSON columns stay strings; ``created_at`` is ``datetime64[us, UTC]``; tokens are ``Int64``.
        """
        where, params = _where(model, namespace, since, until)
        tables = list(self._tables(where, params, 50_000, include_raw, limit))
        table = pa.concat_tables(tables) if tables else PARQUET_SCHEMA.empty_table()
        return table.to_pandas(types_mapper=_PANDAS_TYPES.get)

    def to_parquet(self, path: str | os.PathLike[str], *, include_raw: bool = True, model: Names = None,
                   namespace: Names = None, since: When = None, until: When = None,
                   chunk_size: int = 50_000, progress: bool | None = None) -> dict[str, Any]:
        """Write the matching rows to a zstd Parquet file; returns ``{"path", "rows", "bytes"}``.

        Streams ``chunk_size`` rows at a time into a temporary file beside ``path``, renamed into
        place when complete; on any error (Ctrl-C included) the temporary file is removed.
        """
        target = Path(path).expanduser()
        where, params = _where(model, namespace, since, until)
        total = self.count(model=model, namespace=namespace, since=since, until=until) if progress is not False else None
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
        schema = PARQUET_SCHEMA.with_metadata({
            **PARQUET_SCHEMA.metadata, b"minima_nb.package_version": __version__,
            b"minima_nb.created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        try:
            with _progress(total, progress, "export") as bar, \
                    pq.ParquetWriter(temp, schema, compression="zstd") as writer:
                tables = self._tables(where, params, chunk_size, include_raw)
                rows = _write_overlapped(writer, tables, bar.update)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        return {"path": str(target), "rows": rows, "bytes": target.stat().st_size}

    def from_parquet(self, path: str | os.PathLike[str], *, on_conflict: Literal["keep", "replace"] = "keep",
                     chunk_size: int = 50_000, progress: bool | None = None) -> dict[str, int]:
        """Merge an exported Parquet file into this cache; importing a file twice changes nothing.

        ``on_conflict="keep"`` leaves stored answers alone; ``"replace"`` overwrites those whose
        answer differs. Returns ``rows`` read = ``inserted`` + ``replaced`` + ``skipped``, where
        ``skipped`` includes the ``invalid`` rows (no key or no text), which are never stored.
        """
        if on_conflict not in ("keep", "replace"):
            raise ValueError(f"on_conflict={on_conflict!r} must be 'keep' or 'replace'.")
        source = check_parquet(path)
        names = [c for c in COLUMNS if c in source.schema_arrow.names]
        counts = dict.fromkeys(("rows", "inserted", "replaced", "skipped", "invalid"), 0)
        self._cache.flush()
        try:
            with _progress(source.metadata.num_rows, progress, "import") as bar:
                for batch in source.iter_batches(batch_size=chunk_size, columns=names):
                    self._import_batch(batch, on_conflict == "replace", counts)
                    bar.update(batch.num_rows)
        except pa.ArrowException as exc:
            raise CacheError(f"cannot read {os.fspath(path)!r} ({exc}); it may be truncated or damaged.") from None
        counts["skipped"] = counts["rows"] - counts["inserted"] - counts["replaced"]
        return counts

    def _import_batch(self, batch: pa.RecordBatch, replace: bool, counts: dict[str, int]) -> None:
        rows = batch_rows(batch)
        valid = [r for r in rows if isinstance(r[_KEY], str) and isinstance(r[_TEXT], str)]
        inserted, replaced = _sqlite(self.path, functools.partial(_merge, valid, replace), write=True)
        counts["rows"] += len(rows)
        counts["invalid"] += len(rows) - len(valid)
        counts["inserted"] += inserted
        counts["replaced"] += replaced

    def stats(self, *, model: Names = None, namespace: Names = None, since: When = None,
              until: When = None) -> dict[str, Any]:
        """Rows, rows per model and per namespace, token totals, file size, oldest/newest (ISO, UTC)."""
        where, params = _where(model, namespace, since, until)
        condition = f" WHERE {where}" if where else ""
        rows, tokens_in, tokens_out, oldest, newest = self._read(
            "SELECT COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
            f"MIN(created_at), MAX(created_at) FROM responses{condition}", params)[0]

        def per(column: str) -> dict[str | None, int]:
            sql = f"SELECT {column}, COUNT(*) AS n FROM responses{condition} GROUP BY {column} ORDER BY n DESC, {column}"
            return dict(self._read(sql, params))

        files = (self.path, Path(f"{self.path}-wal"))
        return {"path": str(self.path), "rows": rows, "models": per("model"), "namespaces": per("namespace"),
                "input_tokens": tokens_in, "output_tokens": tokens_out,
                "file_size_bytes": sum(p.stat().st_size for p in files if p.exists()),
                "oldest": _iso(oldest), "newest": _iso(newest)}

    def delete(self, *, model: Names = None, namespace: Names = None, since: When = None,
               until: When = None) -> int:
        """Delete the matching rows (no filter deletes every row); returns how many were deleted."""
        where, params = _where(model, namespace, since, until)
        sql = "DELETE FROM responses" + (f" WHERE {where}" if where else "")
        self._cache.flush()
        return _sqlite(self.path, lambda conn: conn.execute(sql, params).rowcount, write=True)


# -- opening ------------------------------------------------------------------------------------


def open_cache(path_or_dir: str | os.PathLike[str], *, create: bool = True) -> CacheView:
    """A view of the cache in a directory (or of its ``minima_llm.db`` file).

    A directory without a cache gets an empty one, unless ``create=False``, which raises
    CacheError instead. Close the view (or use ``with``) to release the file.
    """
    path = Path(path_or_dir).expanduser()
    directory = path
    if path.name == CACHE_FILENAME or path.is_file():
        if path.name != CACHE_FILENAME:
            raise CacheError(f"{str(path)!r} is a file but not a minima_nb cache; pass the cache "
                             f"directory or its {CACHE_FILENAME} file.")
        directory = path.parent
    if not create and not (directory / CACHE_FILENAME).is_file():
        raise CacheError(f"no minima_nb cache in {str(directory)!r} (no {CACHE_FILENAME} there); "
                         "check the directory (it is the backend's cache_dir / CACHE_DIR).")
    return CacheView(PromptCache(directory), owns_cache=True)


def view(source: Any) -> CacheView:
    """A CacheView of a backend's cache, a PromptCache, a cache directory, or a view (returned as is).

    Only a view made from a directory owns its cache; close that one when done.
    """
    if isinstance(source, CacheView):
        return source
    if isinstance(source, PromptCache):
        return CacheView.from_cache(source)
    if isinstance(source, (str, os.PathLike)):
        return open_cache(source)
    if hasattr(source, "cache"):
        if source.cache is None:
            raise CacheError("this backend has no prompt cache (cache_dir is not set); set cache_dir "
                             "(or CACHE_DIR) to keep answers.")
        return view(source.cache)
    raise TypeError(f"view() takes a backend, a PromptCache or a cache directory, not {type(source).__name__}.")
