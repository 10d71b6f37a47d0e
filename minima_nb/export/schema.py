"""The Parquet form of the prompt cache: its schema, and the checks an import makes first.

The Parquet schema (version ``PARQUET_SCHEMA_VERSION`` = 1, the constant ``PARQUET_SCHEMA``):

=============  ===========================  =============================================
column         Arrow type                   meaning
=============  ===========================  =============================================
key            string                       the cache key (sha256 of the request)
namespace      string                       ``cache_namespace``, null when not set
model          string                       the model asked
messages       string                       the chat messages, as JSON text
params         string                       temperature, max_tokens, extra, as JSON text
text           large_string                 the answer
raw            string                       the server's JSON body; null with include_raw=False
input_tokens   int64                        prompt tokens, null when the server did not say
output_tokens  int64                        completion tokens, null when unknown
finish_reason  string                       e.g. "stop", "length"
latency_s      float64                      seconds the answering call took
created_at     timestamp[us, tz=UTC]        when the answer was stored
=============  ===========================  =============================================

``messages``, ``params`` and ``raw`` stay JSON strings (``json.loads`` them when needed) so the
schema does not depend on what the prompts contain. File metadata: ``minima_nb.schema_version``,
``minima_nb.package_version``, ``minima_nb.created_at``. An import needs the columns ``key``,
``model``, ``messages``, ``params`` and ``text``; the others may be missing (null).
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..cache import COLUMNS
from ..errors import CacheError

__all__ = ["PARQUET_SCHEMA", "PARQUET_SCHEMA_VERSION", "REQUIRED_COLUMNS", "VERSION_KEY", "batch_rows",
           "check_parquet"]

PARQUET_SCHEMA_VERSION = 1
VERSION_KEY = "minima_nb.schema_version"
PARQUET_SCHEMA = pa.schema(
    [("key", pa.string()), ("namespace", pa.string()), ("model", pa.string()),
     ("messages", pa.string()), ("params", pa.string()), ("text", pa.large_string()),
     ("raw", pa.string()), ("input_tokens", pa.int64()), ("output_tokens", pa.int64()),
     ("finish_reason", pa.string()), ("latency_s", pa.float64()),
     ("created_at", pa.timestamp("us", tz="UTC"))],
    metadata={VERSION_KEY: str(PARQUET_SCHEMA_VERSION)},
)
assert tuple(PARQUET_SCHEMA.names) == COLUMNS
REQUIRED_COLUMNS = ("key", "model", "messages", "params", "text")
_TYPES = {field.name: field.type for field in PARQUET_SCHEMA}


def _compatible(found: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_null(found):
        return True
    if pa.types.is_dictionary(found):
        return _compatible(found.value_type, expected)
    if pa.types.is_string(expected) or pa.types.is_large_string(expected):
        return pa.types.is_string(found) or pa.types.is_large_string(found)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(found)
    if pa.types.is_floating(expected):
        return pa.types.is_integer(found) or pa.types.is_floating(found)
    return pa.types.is_timestamp(found)


def _check_schema(schema: pa.Schema, path: str) -> None:
    """Raise CacheError unless ``schema`` is a minima_nb export of a version this code reads."""
    expected = f"expected a minima_nb cache export (schema version {PARQUET_SCHEMA_VERSION}) with the " \
               f"columns {', '.join(COLUMNS)}"
    version = (schema.metadata or {}).get(VERSION_KEY.encode())
    if version is not None and version.decode() != str(PARQUET_SCHEMA_VERSION):
        raise CacheError(f"{path!r} has Parquet schema version {version.decode()}, which this minima-nb "
                         f"does not read; {expected}.")
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise CacheError(f"{path!r} lacks the column(s) {', '.join(missing)}; {expected}.")
    for name in set(COLUMNS) & set(schema.names):
        found = schema.field(name).type
        if not _compatible(found, _TYPES[name]):
            raise CacheError(f"{path!r} has column {name} of type {found}, expected {_TYPES[name]}; {expected}.")


def batch_rows(batch: pa.RecordBatch) -> list[tuple[Any, ...]]:
    """A record batch of an export as rows of SQLite values in COLUMNS order (missing columns null)."""
    columns = []
    for name in COLUMNS:
        if name not in batch.schema.names:
            columns.append([None] * batch.num_rows)
            continue
        array = pc.cast(batch.column(name), _TYPES[name], safe=name != "created_at")  # ns -> us truncates
        if name == "created_at":
            array = pc.divide(array.cast(pa.int64()).cast(pa.float64()), 1_000_000.0)
        columns.append(array.to_pylist())
    return list(zip(*columns, strict=True))


def check_parquet(path: str | os.PathLike[str]) -> pq.ParquetFile:
    """Open a Parquet export for reading; CacheError if unreadable, not Parquet, or another schema."""
    try:
        source = pq.ParquetFile(os.fspath(path))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CacheError(f"cannot read {os.fspath(path)!r}: {reason}.") from None
    except pa.ArrowException as exc:
        raise CacheError(f"{os.fspath(path)!r} is not a readable Parquet file ({exc})") from None
    _check_schema(source.schema_arrow, os.fspath(path))
    return source
