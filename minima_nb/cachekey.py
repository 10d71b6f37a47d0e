"""The prompt cache's key: one canonical JSON spelling of a request and its SHA-256, plus the trace.

Two requests that send the same thing get the same key: integral floats hash like ints, tuples
like lists, dict keys are sorted, and an empty ``extra`` counts as none. ``KeyTracer`` writes
each key with the JSON it was made from (``MINIMA_TRACE_FILE``), so a surprising miss can be
explained by diffing two lines. Nothing here touches SQLite or ever sees an API key.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["KeyTracer", "cache_key", "canonical_json", "normalise_numbers"]

# json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False) builds this same
# encoder on every call; one shared instance (it keeps no state between calls) saves that.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def normalise_numbers(obj: Any) -> Any:
    """Turn integral floats into ints (so ``0`` and ``0.0`` hash alike), tuples into lists, recursively."""
    kind = type(obj)
    # Exact-type checks first: they answer for nearly every value of a chat request, and an
    # isinstance() against the Mapping ABC costs several times more (this runs once per row).
    if kind is str or kind is int or kind is bool or obj is None:
        return obj
    if kind is dict:
        return {key: normalise_numbers(value) for key, value in obj.items()}
    if kind is list:
        return [normalise_numbers(item) for item in obj]
    if isinstance(obj, float):
        return int(obj) if obj.is_integer() else obj
    if isinstance(obj, Mapping):
        return {key: normalise_numbers(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [normalise_numbers(item) for item in obj]
    return obj  # bools, ints, strings, None


def canonical_json(obj: Any) -> str:
    """The one JSON spelling of ``obj``: numbers normalised, keys sorted, no spaces, UTF-8 kept."""
    return _CANONICAL.encode(normalise_numbers(obj))


def _plain_messages(messages: Any) -> bool:
    """Whether ``messages`` is a list of dicts of strings, which normalising would leave as it is."""
    if type(messages) is not list:
        return False
    for message in messages:
        if type(message) is not dict:
            return False
        for value in message.values():
            if type(value) is not str:
                return False
    return True


def cache_key(
    model: str,
    messages: Any,
    temperature: float | None,
    max_tokens: int | None,
    extra: Mapping[str, Any] | None,
    namespace: str | None = None,
) -> tuple[str, str]:
    """Return ``(sha256 hex, canonical JSON)`` of a request; an empty ``extra`` counts as ``None``.

    ``namespace`` joins the key only when set, so keys made without one never change.
    """
    # Each value is normalised on its own (the same as normalising the whole payload); the usual
    # message list of string dicts needs no copy, and the encoder sorts its keys anyway.
    payload: dict[str, Any] = {
        "model": normalise_numbers(model),
        "messages": messages if _plain_messages(messages) else normalise_numbers(messages),
        "temperature": normalise_numbers(temperature),
        "max_tokens": normalise_numbers(max_tokens),
        "extra": normalise_numbers(extra) if extra else None,  # {} and None send the same request
    }
    if namespace is not None:
        payload["namespace"] = normalise_numbers(namespace)
    canonical = _CANONICAL.encode(payload)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest(), canonical


class KeyTracer:
    """Appends one JSON line ``{"key", "canonical"}`` per cache key to a file (``MINIMA_TRACE_FILE``).

    Thread-safe; the file is opened on the first line, in append mode, line-buffered.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file: Any = None

    def trace(self, key: str, canonical: str) -> None:
        """Append the line for one key."""
        line = json.dumps({"key": key, "canonical": canonical}, ensure_ascii=False) + "\n"
        with self._lock:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            self._file.write(line)

    def close(self) -> None:
        """Close the file (a later ``trace`` opens it again)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
