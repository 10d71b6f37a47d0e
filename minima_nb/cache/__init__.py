"""The prompt cache: one SQLite file of answered requests, its key, its writer and its reads.

Internal: users reach the cache through a backend (``backend.cache``) and ``minima_nb.export``.
This package face gathers the names the backend and the export use, so neither imports the
modules below it: :mod:`.key` (the canonical request and its SHA-256), :mod:`.file` (the file,
schema and migrations), :mod:`.writer` (the one writer thread), :mod:`.reads` (the read
queries), :mod:`.store` (``PromptCache``), :mod:`.legacy` (minima-llm 0.2.x's table) and
:mod:`.adoption` (where a miss looks next).
"""

from .adoption import Adoption, Wanted
from .file import CACHE_FILENAME, COLUMNS, MIGRATIONS, SCHEMA_VERSION
from .key import (
    KeyTracer,
    cache_key,
    canonical_json,
    key_function,
    keys_function,
    messages_json,
    messages_key_function,
    normalise_numbers,
)
from .legacy import LEGACY_TABLE, legacy_key, read_legacy
from .store import FIRST_ROWID, READ_CHUNK, CachedAnswer, CacheRow, PromptCache, page_rows, page_sql
from .writer import BUSY_TIMEOUT_S, LOCK_RETRY_S, connect, retry_when_busy

__all__ = [
    "Adoption", "Wanted", "BUSY_TIMEOUT_S", "CACHE_FILENAME", "COLUMNS", "FIRST_ROWID", "LOCK_RETRY_S", "MIGRATIONS",
    "LEGACY_TABLE", "READ_CHUNK", "SCHEMA_VERSION", "legacy_key", "read_legacy", "CacheRow", "CachedAnswer", "KeyTracer", "PromptCache",
    "cache_key", "canonical_json", "connect", "key_function", "keys_function", "messages_json", "messages_key_function",
    "normalise_numbers", "page_rows",
    "page_sql", "retry_when_busy",
]
