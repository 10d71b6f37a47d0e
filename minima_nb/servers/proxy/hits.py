"""The proxy's cache-hit path: a stored answer found with one key and one SQLite read, and the
upstream's body served as it was stored.

A hit is most of what a busy proxy answers (ten notebooks re-running the same cells), so it
skips what only a miss needs: no task, no pacer, no retry policy, and no JSON decode and
re-encode of the stored body (the bytes the upstream sent are the bytes the client gets, id,
model and usage included). The key is the backend's own (:func:`minima_nb.cache.cache_key` with
the configured namespace), its parameter part encoded once per set of request fields; and a
body seen a moment ago is not parsed or keyed again (:class:`ParsedBodies`: the same bytes
always make the same request under one proxy's settings).

The path stands aside, and the request takes the backend's full road, whenever the backend
would do more than read its cache: no cache, ``force_refresh``, or a key trace file (which logs
every key the backend makes). A key not found here is looked up again by the backend, which
also searches minima-llm's table and the model synonyms before it calls upstream.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...cache import CachedAnswer, PromptCache, cache_key, key_function
from ...engine.backend import OpenAIMinimaLlm
from ...types import MinimaLlmRequest, MinimaLlmResponse, Usage
from .translate import ChatCall

__all__ = ["HitPath", "ParsedBodies", "StoredHit"]

_MAX_KEY_FUNCTIONS = 256  # distinct (model, temperature, max_tokens) sets kept ready
_MEMO_BODY_BYTES = 16 * 1024  # larger bodies (images, long documents) are parsed every time
_MEMO_TOTAL_BYTES = 8 * 1024 * 1024  # what the remembered bodies may hold together


class ParsedBodies:
    """Recent request bodies, oldest first: each one's bytes, and for a body that came again,
    what it parsed to (a ChatCall) and its cache key.

    A body's first visit keeps its bytes alone: nearly every first visit is a miss, and a miss
    is rarely asked again, so keeping its parse (the request, its messages) would only give the
    garbage collector more live objects to walk on every miss. A second visit is parsed and
    keyed once more and kept whole: a body asked twice is asked again (a re-run).

    Bounded in bytes; the oldest body is forgotten first. Only bodies that parsed are kept, so
    a refusal (a 4xx) is worked out, and said, every time.
    """

    def __init__(self, max_bytes: int = _MEMO_TOTAL_BYTES, max_body_bytes: int = _MEMO_BODY_BYTES) -> None:
        # An OrderedDict: forgetting the oldest is O(1) there, where a plain dict's first key is
        # found by scanning past every slot deleted since its last resize (43 µs per miss once
        # the memo is full, measured at 85,000 bodies).
        self._entries: OrderedDict[bytes, tuple[ChatCall, str | None] | None] = OrderedDict()
        self._bytes = 0
        self._max_bytes, self._max_body_bytes = max_bytes, max_body_bytes

    def get(self, body: bytes) -> tuple[ChatCall, str | None] | None:
        """``(call, key)`` remembered for ``body`` (key None: the hit path stands aside), or
        None when ``body`` is unknown or was seen once only."""
        return self._entries.get(body)

    def seen(self, body: bytes) -> bool:
        """Whether ``body`` is remembered (its bytes at least)."""
        return body in self._entries

    def remember(self, body: bytes, parsed: tuple[ChatCall, str | None] | None = None) -> None:
        """Keep ``body`` (with ``parsed``, its call and key, when given), unless it is too
        large to be worth keeping."""
        size = len(body)
        entries = self._entries
        if size > self._max_body_bytes:
            return
        if body in entries:  # known already: now with its parse
            entries[body] = parsed
            return
        while entries and self._bytes + size > self._max_bytes:
            oldest, _ = entries.popitem(last=False)
            self._bytes -= len(oldest)
        entries[body] = parsed
        self._bytes += size

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True)
class StoredHit(CachedAnswer):
    """A cached answer as read for the proxy: the lookup's fields, then the stored body's text
    (in :meth:`PromptCache.get_with_raw`'s order)."""

    raw_json: str | None

    def body(self) -> bytes | None:
        """The stored upstream body, ready to send, when it is a chat completion (else None:
        the caller rebuilds one from the fields, as for a row stored without its body)."""
        raw = self.raw_json
        if raw is None or not raw.startswith("{") or '"choices"' not in raw:
            return None
        return raw.encode("utf-8")

    def response(self, request_id: str) -> MinimaLlmResponse:
        """The hit as the backend would return it (``raw`` decoded), for the streaming reply."""
        raw = json.loads(self.raw_json) if self.raw_json is not None else None
        return MinimaLlmResponse(
            request_id=request_id, text=self.text, cached=True,
            usage=Usage(self.input_tokens, self.output_tokens), finish_reason=self.finish_reason,
            latency_s=self.latency_s, attempts=0, model=self.model,
            raw=raw if isinstance(raw, dict) else None, cache_source="primary")


class HitPath:
    """Finds a request's stored answer without the backend's task, pacing or decoding."""

    def __init__(self, backend: OpenAIMinimaLlm) -> None:
        config = backend.config
        usable = not config.force_refresh and not config.trace_file
        self._cache: PromptCache | None = backend.cache if usable else None
        self._namespace = config.cache_namespace
        self._default_model = config.model
        self._key_functions: dict[tuple[Any, ...], Callable[[Any], tuple[str, str]]] = {}

    @property
    def enabled(self) -> bool:
        """False when every request must take the backend's road (see the module docstring)."""
        return self._cache is not None

    def find(self, request: MinimaLlmRequest, key: str | None = None) -> StoredHit | None:
        """The stored answer of ``request`` (whose key is ``key`` when given), or None (a miss,
        or the path stands aside)."""
        cache = self._cache
        if key is None:
            key = self.key(request)
        if cache is None or key is None:
            return None
        row = cache.get_with_raw(key)
        return None if row is None else StoredHit(*row)

    def key(self, request: MinimaLlmRequest) -> str | None:
        """``request``'s cache key, equal to the backend's (and so to ``df.minima.generate``'s);
        None while the path stands aside."""
        if self._cache is None:
            return None
        model = request.model or self._default_model
        t, m = request.temperature, request.max_tokens
        if request.extra:
            return cache_key(model, request.messages, t, m, request.extra, self._namespace)[0]
        # Types join the memo key: 1, 1.0 and True are equal as dict keys but not as JSON.
        fields = (model, type(t), t, type(m), m)
        key_of = self._key_functions.get(fields)
        if key_of is None:
            if len(self._key_functions) >= _MAX_KEY_FUNCTIONS:
                self._key_functions.clear()
            key_of = self._key_functions[fields] = key_function(model, t, m, None, self._namespace)
        return key_of(request.messages)[0]
