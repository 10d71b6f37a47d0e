"""Where a miss looks next: minima-llm's table, the model's synonyms, the read-only lookup caches.

When a request is not in minima_nb's own table, :class:`Adoption` looks for an answer the user
already has, in this order of preference on equal timestamps:

1. the cache file's own table under each *synonym* of the model (``model_synonyms``);
2. minima-llm's table ``cache`` in the same file (a directory minima-llm 0.2.x filled), keyed
   minima-llm's way, under the effective model name and then each synonym;
3. each of ``cache_lookup_dirs`` in order, both tables, under every name. These files are
   opened through ``mode=ro`` URIs and never written.

The newest row wins (as in minima-llm 0.2.7), and it is carried forward into minima_nb's
table under the request's own key, effective model name and original ``created_at``, so the
next run finds it with one ordinary lookup. minima-llm's own rows are never rewritten or
removed. Where a hit came from is the answer's ``cache_source``: ``"synonym:<model>"``,
``"legacy"``, ``"legacy:synonym:<model>"``, ``"lookup:<dir>"`` or
``"lookup:<dir>:synonym:<model>"`` (an ordinary hit is ``"primary"``, a fresh answer None).
With ``cache_namespace`` set, minima-llm's tables are not consulted: it had no namespaces, so
its rows belong to the un-namespaced cache only.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CacheError, ConfigError
from .file import CACHE_FILENAME
from .key import key_function
from .legacy import LEGACY_TABLE, answer_fields, is_legacy_table, legacy_key, read_legacy
from .reads import rows_of_keys
from .store import PromptCache

__all__ = ["Adoption", "Wanted"]

# A found row as get_many_rows() gives it: (text, input_tokens, output_tokens, finish_reason,
# latency_s, model, key); and the hit's source.
Found = tuple[tuple[Any, ...], str]


class LookupCacheMissing(CacheError, FileNotFoundError):
    """A directory in ``cache_lookup_dirs`` holds no cache (also a FileNotFoundError, as in minima-llm)."""


@dataclass(frozen=True)
class Wanted:
    """One request that missed: its minima_nb key and the fields its other keys are made from."""

    key: str
    model: str
    messages: Any
    temperature: float | None = None
    max_tokens: int | None = None
    extra: Mapping[str, Any] | None = None


class _ReadOnlyFile:
    """One cache file opened read-only (``mode=ro``): its minima_nb table and minima-llm's."""

    def __init__(self, path: Path, label: str) -> None:
        self.path = path
        self.label = label
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._schema: tuple[int, tuple[bool, bool]] | None = None  # (schema_version, tables())

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # never reuse a connection across fork
            uri = f"{self.path.resolve().as_uri()}?mode=ro"  # as_uri() escapes "?", "#" and spaces
            self._conn = sqlite3.connect(uri, uri=True, timeout=30.0, check_same_thread=False,
                                         isolation_level=None)
            self._pid = os.getpid()
            self._schema = None
        return self._conn

    def tables(self) -> tuple[bool, bool]:
        """(has minima_nb's ``responses`` table, has minima-llm's ``cache`` table).

        Read again only when the file's schema changed: ``PRAGMA schema_version`` is one read
        of the header page, where the schema itself is a scan of ``sqlite_master`` and a
        ``table_info``; every miss asks (minima-llm may create its table while we run).
        """
        conn = self._connection()
        (version,) = conn.execute("PRAGMA schema_version").fetchone()
        known = self._schema
        if known is not None and known[0] == version:
            return known[1]
        names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        found = ("responses" in names, LEGACY_TABLE in names and is_legacy_table(conn))
        self._schema = (version, found)
        return found

    def ours(self, keys: Sequence[str]) -> list[tuple[Any, ...]]:
        """minima_nb rows ``(key, text, input_tokens, output_tokens, finish_reason, latency_s,
        raw, created_at)`` among ``keys``."""
        conn = self._connection()

        def query(sql: str, params: Sequence[Any]) -> list[Any]:
            return conn.execute(sql, params).fetchall()

        select = ("SELECT key, text, input_tokens, output_tokens, finish_reason, latency_s, raw, "
                  "created_at FROM responses")
        return [row for rows in rows_of_keys(query, select, keys) for row in rows]

    def theirs(self, keys: Sequence[str]) -> list[tuple[Any, ...]]:
        """minima-llm rows among ``keys``, in the same shape as :meth:`ours`."""
        out = []
        for key, text, raw, created_at in read_legacy(self._connection(), keys):
            input_tokens, output_tokens, finish_reason, raw_json = answer_fields(raw)
            out.append((key, text, input_tokens, output_tokens, finish_reason, None, raw_json, created_at))
        return out

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None
        self._schema = None  # another connection may see another file at the same path


class Adoption:
    """Answers for misses from minima-llm's table, model synonyms and read-only lookup caches.

    ``find`` is the one entry point; it carries every hit forward into ``cache``.
    """

    def __init__(self, cache: PromptCache, *, model: str, synonyms: Sequence[str] = (),
                 lookup_dirs: Sequence[str] = (), namespace: str | None = None) -> None:
        self.cache = cache
        self.model = model
        self.synonyms = tuple(synonyms)
        self.namespace = namespace
        self._primary = _ReadOnlyFile(cache.path, "")
        self._lookups: list[_ReadOnlyFile] = []
        for directory in lookup_dirs:
            path = Path(directory).expanduser() / CACHE_FILENAME
            if not path.is_file():
                raise LookupCacheMissing(f"the lookup cache {str(path)!r} does not exist; fix or remove "
                                         f"{str(directory)!r} in cache_lookup_dirs (CACHE_LOOKUP_DIRS).")
            if path.resolve() == cache.path.resolve():
                continue  # the cache itself: already looked at, and written to
            self._lookups.append(_ReadOnlyFile(path, f"lookup:{os.path.dirname(path)}"))
        self._lock = threading.Lock()
        # Hits by kind ("legacy", "synonym", "lookup"; a lookup under a synonym counts as both).
        self.counts: Counter[str] = Counter()

    @classmethod
    def for_config(cls, cache: PromptCache | None, config: Any) -> Adoption | None:
        """The adoption of a backend's cache under a ``MinimaLlmConfig``'s settings (None without a cache).

        Lookup caches without a cache to copy their hits into are refused, as minima-llm did.
        """
        if cache is None:
            if config.cache_lookup_dirs:
                raise ConfigError("cache_lookup_dirs needs a cache_dir to copy their hits into; set "
                                  "cache_dir (CACHE_DIR) or clear cache_lookup_dirs (CACHE_LOOKUP_DIRS).")
            return None
        return cls(cache, model=config.model, synonyms=config.model_synonyms,
                   lookup_dirs=config.cache_lookup_dirs, namespace=config.cache_namespace)

    def names(self, model: str) -> list[str]:
        """The model names a request is looked up under, its own first.

        Synonyms apply only to the configured model and its synonyms; any other model keeps
        its own name alone (minima-llm 0.2.7's rule).
        """
        family = [self.model, *self.synonyms]
        if model not in family:
            return [model]
        return list(dict.fromkeys([model, *family]))

    def find(self, wanted: Sequence[Wanted]) -> dict[str, Found]:
        """``{key: (row, source)}`` for the wanted requests found anywhere; each is carried forward."""
        unique = list({w.key: w for w in wanted}.values())
        if not unique:
            return {}
        with self._lock:
            try:
                if self._nothing_to_search():
                    return {}
                best = self._search(unique)
            except sqlite3.Error as exc:
                raise CacheError(f"cannot read a cache looked up for misses ({exc}); check "
                                 "cache_lookup_dirs (CACHE_LOOKUP_DIRS) and the cache file.") from None
        found: dict[str, Found] = {}
        for index, (row, source) in best.items():
            w = unique[index]
            key, text, input_tokens, output_tokens, finish_reason, latency_s, raw, created_at = row
            self.cache.put_fields(
                w.key, self.namespace, w.model, w.messages,
                {"temperature": w.temperature, "max_tokens": w.max_tokens, "extra": w.extra},
                text, input_tokens=input_tokens, output_tokens=output_tokens,
                finish_reason=finish_reason, latency_s=latency_s, created_at=created_at or 0.0,
                raw_json=raw,
            )
            self.counts.update(kind for kind in ("legacy", "synonym", "lookup") if kind in source)
            found[w.key] = ((text, input_tokens, output_tokens, finish_reason, latency_s, w.model, w.key), source)
        return found

    def find_requests(self, requests: Sequence[Any], models: Sequence[str], keys: Sequence[str]) -> dict[str, Found]:
        """:meth:`find` for request objects (``messages``, ``temperature``, ``max_tokens``, ``extra``).

        Returns at once, building nothing, when there is nowhere to look (the usual case: a
        plain minima_nb cache, no synonyms, no lookup caches).
        """
        with self._lock:
            try:
                if self._nothing_to_search():
                    return {}
            except sqlite3.Error:
                pass  # find() says what went wrong
        return self.find([Wanted(k, m, r.messages, r.temperature, r.max_tokens, r.extra)
                          for r, m, k in zip(requests, models, keys, strict=True)])

    def close(self) -> None:
        """Close the read-only connections (they reopen on the next ``find``)."""
        with self._lock:
            for source in (self._primary, *self._lookups):
                source.close()

    # -- internals --------------------------------------------------------------------------

    def _nothing_to_search(self) -> bool:
        """True when no source but our own table could hold an answer under the request's own
        key (already missed): no synonyms, no lookup caches, and no minima-llm table that
        counts. Call with the lock held (the connection is shared with the loop's thread)."""
        if self.synonyms or self._lookups:
            return False
        return self.namespace is not None or not self._primary.tables()[1]

    def _search(self, unique: list[Wanted]) -> dict[int, tuple[tuple[Any, ...], str]]:
        sources = [(rank, source, *source.tables()) for rank, source in enumerate((self._primary, *self._lookups))]
        legacy = self.namespace is None and any(theirs for *_, theirs in sources)
        if not legacy and not self.synonyms and not any(ours for _, _, ours, _ in sources[1:]):
            return {}  # nothing to look at: the usual case of a plain minima_nb cache
        key_functions: dict[Any, Callable[[Any], tuple[str, str]]] = {}
        # key -> [(wanted index, name index)], for our spelling and for minima-llm's; a list, as one
        # key can serve two requests (one for "a" whose synonym is "b", one for "b").
        ours: dict[str, list[tuple[int, int]]] = {}
        theirs: dict[str, list[tuple[int, int]]] = {}
        names_of: list[list[str]] = []
        for i, w in enumerate(unique):
            names = self.names(w.model)
            names_of.append(names)
            for j, name in enumerate(names):
                ours.setdefault(w.key if j == 0 else self._our_key(key_functions, name, w), []).append((i, j))
                if legacy:
                    their_key = legacy_key(name, w.messages, w.temperature, w.max_tokens, w.extra)[0]
                    theirs.setdefault(their_key, []).append((i, j))
        own_keys = [k for k, places in ours.items() if all(j > 0 for _, j in places)]  # plain keys missed here
        # (rank, source file, rows); a lower rank wins a tie on created_at.
        batches: list[tuple[int, str, list[tuple[Any, ...]], dict[str, list[tuple[int, int]]]]] = []
        for rank, source, has_ours, has_theirs in sources:
            if has_ours:
                rows = source.ours(own_keys if source is self._primary else list(ours))
                batches.append((2 * rank, source.label, rows, ours))
            if has_theirs and legacy:
                batches.append((2 * rank + 1, source.label or "legacy", source.theirs(list(theirs)), theirs))
        best: dict[int, tuple[tuple[float, int, int], tuple[Any, ...], str]] = {}
        for rank, label, rows, where in batches:
            for row in rows:
                for i, j in where[row[0]]:
                    score = (float(row[7] or 0.0), -rank, -j)
                    if i not in best or score > best[i][0]:
                        best[i] = (score, row, _source(label, names_of[i][j] if j else None))
        return {i: (row, source) for i, (_, row, source) in best.items()}

    def _our_key(self, memo: dict[Any, Callable[[Any], tuple[str, str]]], name: str, w: Wanted) -> str:
        fields: tuple[Any, ...] | None = (name, type(w.temperature), w.temperature, type(w.max_tokens), w.max_tokens, id(w.extra))
        try:
            key_of = memo.get(fields)
        except TypeError:  # an unhashable field (a list as temperature): no memo
            fields, key_of = None, None
        if key_of is None:
            key_of = key_function(name, w.temperature, w.max_tokens, w.extra, self.namespace)
            if fields is not None:
                memo[fields] = key_of
        return key_of(w.messages)[0]


def _source(label: str, synonym: str | None) -> str:
    """The ``cache_source`` of a hit: where (``label``, empty for the cache itself) and under which name."""
    if synonym is None:
        return label or "primary"
    return f"{label}:synonym:{synonym}" if label else f"synonym:{synonym}"
