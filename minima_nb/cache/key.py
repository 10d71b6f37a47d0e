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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["KeyTracer", "cache_key", "canonical_json", "key_function", "keys_function", "messages_json",
           "messages_key_function", "normalise_numbers", "string_messages_json"]

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


# The string escaper the encoder above uses (ensure_ascii=False), for spelling messages directly.
_json_string = json.encoder.encode_basestring


def string_messages_json(messages: Any, *, canonical: bool) -> str | None:
    """The JSON text of a list of string-to-string dicts, or None for any other value.

    ``canonical=True``: keys sorted, no spaces (the key's spelling, as ``canonical_json``);
    ``canonical=False``: as ``json.dumps(messages, ensure_ascii=False)`` writes it (what the
    cache stores). That is the shape of nearly every chat message list, and spelling it here,
    with the encoder's own string escaper, gives the encoder's exact text in a third of its time.
    """
    if type(messages) is not list:
        return None
    comma, colon = (",", ":") if canonical else (", ", ": ")
    spelled = []
    for message in messages:
        if type(message) is not dict:
            return None
        role, content = message.get("role"), message.get("content")
        if canonical and len(message) == 2 and type(role) is str and type(content) is str:  # the usual message
            spelled.append('{"content":' + _json_string(content) + ',"role":' + _json_string(role) + "}")
            continue
        for name, value in message.items():
            if type(name) is not str or type(value) is not str:
                return None
        names = sorted(message) if canonical else message
        spelled.append("{" + comma.join([_json_string(name) + colon + _json_string(message[name]) for name in names]) + "}")
    return "[" + comma.join(spelled) + "]"


def _key_parts(model: str, temperature: float | None, max_tokens: int | None,
               extra: Mapping[str, Any] | None, namespace: str | None) -> tuple[str, str]:
    """The canonical JSON around the messages: ``prefix + messages JSON + suffix`` is the key's text.

    The canonical JSON of a dict is its ``"name":value`` parts in name order, so the parts other
    than ``messages`` are encoded once per set of request fields.
    """
    fields: dict[str, Any] = {
        "model": normalise_numbers(model),
        "temperature": normalise_numbers(temperature),
        "max_tokens": normalise_numbers(max_tokens),
        "extra": normalise_numbers(extra) if extra else None,  # {} and None send the same request
    }
    if namespace is not None:  # joins the key only when set, so keys made without one never change
        fields["namespace"] = normalise_numbers(namespace)
    encode = _CANONICAL.encode
    parts = {name: f"{encode(name)}:{encode(value)}" for name, value in fields.items()}
    names = sorted([*fields, "messages"])
    split = names.index("messages")
    prefix = "{" + "".join(parts[n] + "," for n in names[:split]) + encode("messages") + ":"
    return prefix, "".join("," + parts[n] for n in names[split + 1:]) + "}"


def messages_json(messages: Any) -> str:
    """The canonical JSON of a message list (the key's spelling: keys sorted, no spaces)."""
    body = string_messages_json(messages, canonical=True)
    return _CANONICAL.encode(normalise_numbers(messages)) if body is None else body


def key_function(
    model: str,
    temperature: float | None,
    max_tokens: int | None,
    extra: Mapping[str, Any] | None,
    namespace: str | None = None,
) -> Callable[[Any], tuple[str, str]]:
    """``cache_key`` with everything but the messages fixed: ``key_of(messages) -> (key, canonical)``.

    For many prompts under the same parameters (a DataFrame column): the parts other than
    ``messages`` are encoded once here and each call encodes only the messages before hashing.
    """
    prefix, suffix = _key_parts(model, temperature, max_tokens, extra, namespace)
    encode, sha256 = _CANONICAL.encode, hashlib.sha256

    def key_of(messages: Any) -> tuple[str, str]:
        body = string_messages_json(messages, canonical=True)  # messages_json, inlined: once per row
        if body is None:
            body = encode(normalise_numbers(messages))
        canonical = prefix + body + suffix
        return sha256(canonical.encode("utf-8")).hexdigest(), canonical

    return key_of


_MAX_ROLES = 32  # spellings kept per keys_function; a column rarely holds more than three roles


def keys_function(
    model: str,
    temperature: float | None,
    max_tokens: int | None,
    extra: Mapping[str, Any] | None,
    namespace: str | None = None,
) -> Callable[[Iterable[Any]], list[str | None]]:
    """:func:`key_function` over many prompts at once: ``keys_of(prompts) -> [key or None, ...]``.

    Each key is the one ``cache_key`` gives that prompt (None for a None prompt); only the keys
    are returned, not their canonical JSON. The usual prompt, one ``{"role", "content"}``
    message of strings, is hashed without building any part of its JSON but its text: the
    canonical string around it is spelled once per role. Any other message list takes
    :func:`key_function`'s path. This is the bulk path of a cached re-run (100k rows).
    """
    prefix, suffix = _key_parts(model, temperature, max_tokens, extra, namespace)
    key_of = key_function(model, temperature, max_tokens, extra, namespace)
    sha256, escape = hashlib.sha256, _json_string
    around: dict[str, tuple[str, str]] = {}  # role -> the canonical text before and after the content

    def keys_of(prompts: Iterable[Any]) -> list[str | None]:
        keys: list[str | None] = []
        append = keys.append
        for messages in prompts:
            if type(messages) is list and len(messages) == 1:
                message = messages[0]
                if type(message) is dict and len(message) == 2:
                    role, content = message.get("role"), message.get("content")
                    if type(role) is str and type(content) is str:  # so its names are exactly these two
                        ends = around.get(role)
                        if ends is None:
                            if len(around) >= _MAX_ROLES:
                                around.clear()
                            # sorted names: "content" before "role", as canonical_json spells it
                            ends = around[role] = (prefix + '[{"content":', ',"role":' + escape(role) + "}]" + suffix)
                        append(sha256((ends[0] + escape(content) + ends[1]).encode("utf-8")).hexdigest())
                        continue
            append(None if messages is None else key_of(messages)[0])
        return keys

    return keys_of


def messages_key_function(
    model: str,
    temperature: float | None,
    max_tokens: int | None,
    extra: Mapping[str, Any] | None,
    namespace: str | None = None,
) -> Callable[[Any], tuple[str, str]]:
    """Like :func:`key_function`, but ``key_of(messages) -> (key, messages JSON)``: the bulk path
    of callers that send the messages too (provider batch files reuse the spelling in each line)."""
    prefix, suffix = _key_parts(model, temperature, max_tokens, extra, namespace)
    encode, sha256 = _CANONICAL.encode, hashlib.sha256

    def key_of(messages: Any) -> tuple[str, str]:
        body = string_messages_json(messages, canonical=True)
        if body is None:
            body = encode(normalise_numbers(messages))
        return sha256((prefix + body + suffix).encode("utf-8")).hexdigest(), body

    return key_of


def cache_key(
    model: str,
    messages: Any,
    temperature: float | None,
    max_tokens: int | None,
    extra: Mapping[str, Any] | None,
    namespace: str | None = None,
) -> tuple[str, str]:
    """Return ``(sha256 hex, canonical JSON)`` of a request; an empty ``extra`` counts as ``None``.

    The canonical JSON is that of ``{"model", "messages", "temperature", "max_tokens", "extra"}``
    (plus ``"namespace"`` only when set, so keys made without one never change).
    """
    return key_function(model, temperature, max_tokens, extra, namespace)(messages)


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
