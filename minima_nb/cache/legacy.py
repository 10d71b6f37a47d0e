"""minima-llm 0.2.x's cache table: how it is recognised, how its keys are spelled, how it is read.

minima-llm keeps its answers in ``{cache_dir}/minima_llm.db`` too, the same file name as ours,
in a table ``cache (key, response_text, response_raw, created_at)``; 0.2.7 added the columns
``model`` and ``canonical``. Its key is the SHA-256 of its own JSON spelling of the request
(ASCII-escaped, no number normalisation, ``temperature``/``max_tokens``/``extra`` present only
when set), which differs from ours, so a minima-llm row is found by spelling the request its
way. This module only reads that table and never writes to it: a user still running
minima-llm on the directory keeps every row in the form minima-llm reads. Nothing here knows
about minima_nb's own table (:mod:`.file`) or the lookup order (:mod:`.adoption`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["LEGACY_COLUMNS", "LEGACY_TABLE", "LegacyRow", "answer_fields", "is_legacy_table",
           "legacy_key", "read_legacy"]

LEGACY_TABLE = "cache"
# The columns every minima-llm 0.2.x writes (0.2.7's ``model``/``canonical`` may be absent).
LEGACY_COLUMNS = frozenset({"key", "response_text", "response_raw", "created_at"})
_READ_CHUNK = 500  # keys per IN (...) query, well under SQLite's variable limit

# (key, response_text, response_raw JSON text or None, created_at)
LegacyRow = tuple[str, str, str | None, float]


def is_legacy_table(conn: sqlite3.Connection) -> bool:
    """Whether ``conn``'s database holds minima-llm's ``cache`` table (any 0.2.x schema)."""
    columns = {row[1] for row in conn.execute(f"PRAGMA table_info({LEGACY_TABLE})")}
    return LEGACY_COLUMNS <= columns


def _plain(obj: Any) -> Any:
    # A frozen request may hold a MappingProxyType; minima-llm saw the same content as a dict.
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def legacy_key(model: str, messages: Any, temperature: float | None, max_tokens: int | None,
               extra: Mapping[str, Any] | None) -> tuple[str, str]:
    """``(sha256 hex, canonical JSON)`` of a request as minima-llm 0.2.x keys it.

    The fields are taken as given (``0`` and ``0.0`` are different keys there), because that is
    what minima-llm hashed; an empty ``extra`` is left out, as minima-llm leaves out a falsy one.
    """
    fields: dict[str, Any] = {"model": model, "messages": messages}
    if temperature is not None:
        fields["temperature"] = temperature
    if max_tokens is not None:
        fields["max_tokens"] = max_tokens
    if extra:
        fields["extra"] = extra
    canonical = json.dumps(fields, sort_keys=True, ensure_ascii=True, separators=(",", ":"),
                           default=_plain)
    return hashlib.sha256(canonical.encode()).hexdigest(), canonical


def read_legacy(conn: sqlite3.Connection, keys: Sequence[str]) -> list[LegacyRow]:
    """The rows of minima-llm's table among ``keys`` (any order), 500 keys per query."""
    rows: list[LegacyRow] = []
    for start in range(0, len(keys), _READ_CHUNK):
        chunk = keys[start : start + _READ_CHUNK]
        rows.extend(conn.execute(
            f"SELECT key, response_text, response_raw, created_at FROM {LEGACY_TABLE} "
            f"WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall())
    return rows


def answer_fields(raw_json: str | None) -> tuple[int | None, int | None, str | None, str | None]:
    """``(input_tokens, output_tokens, finish_reason, raw_json)`` recovered from a stored body.

    minima-llm kept only the text and the server's body; the usage and finish reason are read
    back from the body. A body that is not a JSON object is dropped (None), never guessed at.
    """
    if not raw_json:
        return None, None, None, None
    try:
        body = json.loads(raw_json)
    except ValueError:
        return None, None, None, None
    if not isinstance(body, dict):
        return None, None, None, None
    usage = body.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    finish = first.get("finish_reason")

    def count(name: str) -> int | None:
        value = usage.get(name)
        return value if type(value) is int else None

    return (count("prompt_tokens"), count("completion_tokens"),
            finish if isinstance(finish, str) else None, raw_json)
