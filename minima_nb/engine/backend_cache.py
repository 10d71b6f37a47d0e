"""The backend's side of the prompt cache: keys, bulk lookups, cached answers, stored answers.

:class:`CacheSide` is a mixin of :class:`~.backend.OpenAIMinimaLlm`, kept apart so the backend
reads as one request's path (pacing, retry, transport) and this module as everything that
touches the cache. With :mod:`.backend` it is the one place where the engine meets the cache
(tests/test_layers.py allows ``engine/backend*.py`` only).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..cache import (
    Adoption,
    CachedAnswer,
    KeyTracer,
    PromptCache,
    Wanted,
    cache_key,
    key_function,
    keys_function,
)
from ..config import MinimaLlmConfig
from ..types import MinimaLlmRequest, MinimaLlmResponse, Usage
from .pulse import BackendPulse
from .wire import ParsedAnswer

_MAX_KEY_FUNCTIONS = 256  # distinct (model, temperature, max_tokens) sets kept ready by _key


class CacheSide:
    """What the backend does with its prompt cache (a mixin; the backend holds the state)."""

    config: MinimaLlmConfig
    _pulse: BackendPulse

    def _open_cache(self, config: MinimaLlmConfig) -> None:
        """The cache, key tracer and adoption of ``config`` (each None when not configured)."""
        self._cache = PromptCache(config.cache_dir) if config.cache_dir else None
        self._tracer = KeyTracer(config.trace_file) if config.trace_file else None
        # A miss also looks in minima-llm's table, under model synonyms and in lookup caches.
        self._adoption = Adoption.for_config(self._cache, config)
        self._params_spelled: dict[tuple[Any, ...], str] = {}
        # One key function per (model, temperature, max_tokens) of requests without ``extra``:
        # a request's key then costs only its messages' spelling and hash (see _key).
        self._key_functions: dict[tuple[Any, ...], Callable[[Any], tuple[str, str]]] = {}

    @property
    def cache(self) -> PromptCache | None:
        """The prompt cache, or ``None`` when ``cache_dir`` is not set."""
        return self._cache

    def lookup(
        self,
        prompts: Sequence[Any],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        extra: Mapping[str, Any] | None = None,
        text_only: bool = False,
    ) -> list[Any]:
        """The cached answer of each prompt (a chat message list, or None), sending nothing.

        Per prompt, the stored row ``(text, input_tokens, output_tokens, finish_reason,
        latency_s, model, key)`` (just the text with ``text_only=True``), or None for a miss,
        a None prompt, no cache, or force refresh in the config. All prompts share the request
        fields given (``model`` defaults to the configured one). This is the bulk path of a
        cached re-run: no object is made per row. Only hits are counted in
        :meth:`cache_stats`; a miss is counted once, when :meth:`run_batched` sends it.
        """
        return self.lookup_keyed(prompts, model=model, temperature=temperature,
                                 max_tokens=max_tokens, extra=extra, text_only=text_only)[0]

    def lookup_keyed(
        self,
        prompts: Sequence[Any],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        extra: Mapping[str, Any] | None = None,
        text_only: bool = False,
    ) -> tuple[list[Any], list[str | None] | None]:
        """:meth:`lookup`, and each prompt's cache key (None for a None prompt).

        The keys are None as a whole when nothing was looked up (no cache, or force refresh).
        A caller that sends the misses passes their keys to :meth:`run_batched`
        (``looked_up_keys``), which then neither keys nor looks them up a second time.
        """
        if self._cache is None or self.config.force_refresh:
            return [None] * len(prompts), None
        name = model or self.config.model
        namespace = self.config.cache_namespace
        keys: list[str | None]
        if self._tracer is None:
            keys = keys_function(name, temperature, max_tokens, extra, namespace)(prompts)
        else:  # the trace writes each key's canonical JSON: the per-prompt path spells it
            key_of = key_function(name, temperature, max_tokens, extra, namespace)
            keys = [None if messages is None else self._traced(*key_of(messages)) for messages in prompts]
        found = self._found(self._cache, keys, text_only)
        unfound = found.count(None)
        self._pulse.record_hits(len(found) - unfound)
        if self._adoption is not None and unfound > keys.count(None):  # a row with a prompt missed
            missed = [(i, k) for i, (k, hit) in enumerate(zip(keys, found, strict=True)) if hit is None and k is not None]
            adopted = self._adoption.find([Wanted(k, name, prompts[i], temperature, max_tokens, extra) for i, k in missed])
            for i, k in missed:
                answer = adopted.get(k)
                if answer is not None:
                    found[i] = answer[0][0] if text_only else answer[0]
            for _, source in adopted.values():
                self._pulse.record_hits(1, source)
        return found, keys

    @staticmethod
    def _found(cache: PromptCache, keys: list[str | None], text_only: bool) -> list[Any]:
        """Per key its cached text (``text_only``) or row, else None; in the order of ``keys``."""
        if text_only:
            return cache.texts_of(keys, count_misses=False)
        rows: dict[Any, tuple[Any, ...]] = cache.get_many_rows((k for k in keys if k is not None), count_misses=False)
        return list(map(rows.get, keys))  # rows.get(None) is None

    def cache_stats(self) -> dict[str, Any]:
        """Entries, file size, and this process's hits and misses; ``{}`` without a cache."""
        return self._cache.stats() if self._cache is not None else {}

    def _adopt(self, requests: Sequence[MinimaLlmRequest], models: Sequence[str], keys: Sequence[str]) -> dict[str, Any]:
        """Misses answered by minima-llm's table, synonyms or lookup caches (cache/adoption.py)."""
        return self._adoption.find_requests(requests, models, keys) if self._adoption is not None else {}

    def _key(self, request: MinimaLlmRequest, model: str) -> str | None:
        """``request``'s cache key (None without a cache), as :func:`cache_key` makes it.

        The parts other than the messages are encoded once per set of request fields and kept
        (a proxy or a loop of single calls sends the same fields every time). A request with
        ``extra`` is keyed from scratch: its fields cannot key the memo by identity (a later
        ``extra`` may reuse a dead one's id) and spelling them to key it costs what it saves.
        """
        if self._cache is None:
            return None
        namespace = self.config.cache_namespace
        t, m, extra = request.temperature, request.max_tokens, request.extra
        fields = None if extra else _memo_key(model, t, m)
        if fields is None:
            return self._traced(*cache_key(model, request.messages, t, m, extra, namespace))
        key_of = self._key_functions.get(fields)
        if key_of is None:
            if len(self._key_functions) >= _MAX_KEY_FUNCTIONS:  # NaN never equals itself: bounded
                self._key_functions.clear()
            key_of = self._key_functions[fields] = key_function(model, t, m, None, namespace)
        return self._traced(*key_of(request.messages))

    def _traced(self, key: str, canonical: str) -> str:
        if self._tracer is not None:
            self._tracer.trace(key, canonical)
        return key

    def _keys(self, requests: Sequence[MinimaLlmRequest], models: list[str]) -> list[str]:
        """Each request's cache key; without a cache, the same key minus the namespace (its
        identity for de-duplication). Requests sharing their fields share one key function."""
        cached = self._cache is not None
        namespace = self.config.cache_namespace if cached else None
        key_functions: dict[tuple[Any, ...], Callable[[Any], tuple[str, str]]] = {}
        keys = []
        for request, model in zip(requests, models, strict=True):
            t, m = request.temperature, request.max_tokens
            fields = _memo_key(model, t, m, id(request.extra))  # requests keep extra alive
            key_of = key_functions.get(fields) if fields is not None else None
            if key_of is None:
                key_of = key_function(model, t, m, request.extra, namespace)
                if fields is not None:
                    key_functions[fields] = key_of
            key, canonical = key_of(request.messages)
            keys.append(self._traced(key, canonical) if cached else key)
        return keys

    async def _bulk_lookup(self, cache: PromptCache, keys: list[str]) -> dict[str, tuple[Any, ...]]:
        # Large lookups leave the loop thread; small ones are cheaper than a thread hop.
        if len(keys) <= 64:
            return cache.get_many_rows(keys)
        return await asyncio.to_thread(cache.get_many_rows, keys)

    def _from_cache(
        self, request: MinimaLlmRequest, hit: CachedAnswer, key: str, include_raw: bool
    ) -> MinimaLlmResponse:
        return self._cached_response(
            request.request_id, hit.text, hit.input_tokens, hit.output_tokens, hit.finish_reason,
            hit.latency_s, hit.model, key, include_raw,
        )

    def _cached_response(
        self, request_id: str, text: str, input_tokens: int | None, output_tokens: int | None,
        finish_reason: str | None, latency_s: float | None, model: str | None, key: str,
        include_raw: bool, source: str = "primary",
    ) -> MinimaLlmResponse:
        # Only cache hits get here, so the cache is there; the check is for the type checker.
        raw = self._cache.get_raw(key) if include_raw and self._cache is not None else None
        self._pulse.record_hits(1, source)
        return MinimaLlmResponse(
            request_id=request_id,
            text=text,
            cached=True,
            usage=Usage(input_tokens, output_tokens),
            finish_reason=finish_reason,
            latency_s=latency_s,
            attempts=0,
            model=model,
            raw=raw,
            cache_source=source,
        )

    def _store(
        self, cache: PromptCache, key: str, request: MinimaLlmRequest, model: str,
        answer: ParsedAnswer, latency: float,
    ) -> None:
        # Once per answer on the loop thread: the usual request's params JSON comes from a memo
        # (no dict built), and the arguments go by position (cheaper than keywords).
        temperature, max_tokens, extra = request.temperature, request.max_tokens, request.extra
        params_json = self._params_json(temperature, max_tokens) if extra is None else None
        params = None if params_json is not None else {
            "temperature": temperature, "max_tokens": max_tokens, "extra": extra}
        cache.put_fields(
            key, self.config.cache_namespace, model, request.messages, params, answer.text,
            answer.raw, answer.input_tokens, answer.output_tokens, answer.finish_reason, latency,
            time.time(), answer.raw_json, params_json,
        )

    def _params_json(self, temperature: float | None, max_tokens: int | None) -> str | None:
        """The stored JSON of the params of a request without ``extra``, made once per
        (temperature, max_tokens); None when they cannot key the memo."""
        if temperature is None and max_tokens is None:
            return _DEFAULT_PARAMS_JSON  # the usual request: neither set
        fields = _memo_key(temperature, max_tokens)
        if fields is None:
            return None
        spelled = self._params_spelled.get(fields)
        if spelled is None:
            if len(self._params_spelled) >= 64:  # NaN never equals itself: keep the memo bounded
                self._params_spelled.clear()
            params = {"temperature": temperature, "max_tokens": max_tokens, "extra": None}
            spelled = self._params_spelled[fields] = json.dumps(params, ensure_ascii=False)
        return spelled


_DEFAULT_PARAMS_JSON = json.dumps({"temperature": None, "max_tokens": None, "extra": None})


def _memo_key(*values: Any) -> tuple[Any, ...] | None:
    """``values`` with their types, to key a memo of what they are spelled as; None when one
    cannot key a dict (a mistaken list as a temperature). Types too: True == 1 in a tuple, but
    JSON spells them apart."""
    key = (*map(type, values), *values)
    try:
        hash(key)
    except TypeError:
        return None
    return key
