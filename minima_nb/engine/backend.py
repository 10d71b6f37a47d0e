"""``OpenAIMinimaLlm``: one request through cache → pacing → retry → transport, and batches of them.

The backend is thin glue, and the one place where the engine meets the prompt cache. It owns a
:class:`~.call.Caller` (transport, pacer, retry policy: the wire side) and the prompt cache
(keys, lookups, stored answers). It can be used from several event loops one after another:
everything loop-bound is created lazily per loop.

``generate`` never raises for a failed call: it returns a :class:`MinimaLlmFailure`. It raises
only for programming errors (a malformed message list, a wrong argument type).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..cache import Adoption, CachedAnswer, KeyTracer, PromptCache, Wanted, cache_key, key_function
from ..config import MinimaLlmConfig
from ..controls import debug_trace_enabled, get_retry_seed, set_last_cached, trace_exchange
from ..errors import BatchAborted, CallError
from ..types import MinimaLlmFailure, MinimaLlmRequest, MinimaLlmResponse, MinimaLlmResult, Usage
from .call import Caller
from .pacer import RatePacer
from .pool import ProgressArg, run_batched_callable
from .pulse import BackendPulse
from .spellings import PredecessorSpellings
from .transport import Transport
from .wire import ParsedAnswer, build_payload, check_messages, encode

CHARS_PER_TOKEN = 4  # rough prompt-size estimate for tokens-per-minute pacing


class OpenAIMinimaLlm(PredecessorSpellings):
    """Async backend for any OpenAI-compatible chat-completions endpoint.

    ``config`` defaults to :meth:`MinimaLlmConfig.from_env`. Pass ``client=httpx.AsyncClient(...)``
    to send through your own httpx client. ``clock``, ``sleep`` and ``rng`` exist for tests.
    """

    def __init__(
        self,
        config: MinimaLlmConfig | None = None,
        *,
        client: Any = None,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config = config if config is not None else MinimaLlmConfig.from_env()
        self._caller = Caller(config, client=client, transport=transport, clock=clock,
                              sleep=sleep, rng=rng)
        self._cache = PromptCache(config.cache_dir) if config.cache_dir else None
        self._tracer = KeyTracer(config.trace_file) if config.trace_file else None
        # A miss also looks in minima-llm's table, under model synonyms and in lookup caches.
        self._adoption = Adoption.for_config(self._cache, config)
        self._refresh_rounds: dict[str, int] = {}
        self._params_spelled: dict[tuple[Any, ...], str] = {}
        self._pulse = BackendPulse()

    # -- public API ------------------------------------------------------------------------------

    @property
    def cache(self) -> PromptCache | None:
        """The prompt cache, or ``None`` when ``cache_dir`` is not set."""
        return self._cache

    @property
    def pacer(self) -> RatePacer:
        """The request pacer shared by every call of this backend."""
        return self._caller.pacer

    async def generate(
        self, request: MinimaLlmRequest, force_refresh: bool = False, *, include_raw: bool = False
    ) -> MinimaLlmResult:
        """Answer one request: from the cache if there, else from the server with pacing and retries."""
        check_messages(request.request_id, request.messages)
        model = request.model or self.config.model
        refresh = force_refresh or self.config.force_refresh
        key = self._key(request, model)
        cache = self._cache  # not None whenever key is not None: keys are made for a cache only
        if key is not None and cache is not None and not refresh:
            hit = cache.get(key)
            if hit is not None:
                set_last_cached(True)
                return self._from_cache(request, hit, key, include_raw)
            for (text, i_tok, o_tok, finish, latency, m, _), source in self._adopt([request], [model], [key]).values():
                set_last_cached(True)
                return self._cached_response(request.request_id, text, i_tok, o_tok, finish, latency, m,
                                             key, include_raw, source)
        set_last_cached(False)
        return await self._call(request, model, key, refresh, include_raw)

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
        :meth:`cache_stats`; a miss is counted once, when :meth:`run_batched` looks it up
        again just before sending it.
        """
        if self._cache is None or self.config.force_refresh:
            return [None] * len(prompts)
        key_of = key_function(model or self.config.model, temperature, max_tokens, extra,
                              self.config.cache_namespace)
        keys = [None if messages is None else self._traced(*key_of(messages)) for messages in prompts]
        read = self._cache.get_texts if text_only else self._cache.get_many_rows
        found = read((k for k in keys if k is not None), count_misses=False)
        self._pulse.record_hits(len(found))
        if self._adoption is not None and len(found) < len(keys):
            name = model or self.config.model
            adopted = self._adoption.find([Wanted(k, name, p, temperature, max_tokens, extra)
                                           for k, p in zip(keys, prompts, strict=True) if k is not None and k not in found])
            found.update({k: row[0] if text_only else row for k, (row, _) in adopted.items()})  # type: ignore[misc]
            for _, source in adopted.values():
                self._pulse.record_hits(1, source)
        return [None if key is None else found.get(key) for key in keys]

    async def run_batched(
        self,
        requests: Sequence[MinimaLlmRequest],
        *,
        force_refresh: bool = False,
        include_raw: bool = False,
        progress: ProgressArg = True,
        label: str = "minima",
        draw_in_loop: bool = True,
        cached_rows: int = 0,
    ) -> list[MinimaLlmResult]:
        """Answer many requests; results in input order, one per request (a failure in its slot).

        Cached answers are read in bulk before any request goes out; identical requests are sent
        once; the batch stops with ``BatchAborted`` past ``batch.max_failures`` failures.
        ``cached_rows`` counts rows the caller already answered with :meth:`lookup`: progress
        shows them as cached rows of the same batch.
        """
        for r in requests:
            check_messages(r.request_id, r.messages)
        refresh = force_refresh or self.config.force_refresh
        models = [r.model or self.config.model for r in requests]
        keys = self._keys(requests, models)
        rows_per_key = Counter(keys)
        first_of: dict[str, int] = {}
        for i, k in enumerate(keys):
            first_of.setdefault(k, i)
        cache = self._cache
        hits: dict[str, tuple[Any, ...]] = {}
        adopted: dict[str, tuple[tuple[Any, ...], str]] = {}
        if cache is not None and not refresh:
            hits = await self._bulk_lookup(cache, list(first_of))
            if self._adoption is not None and len(hits) < len(first_of):
                missed = [i for k, i in first_of.items() if k not in hits]
                adopted = await asyncio.to_thread(self._adopt, [requests[i] for i in missed],
                                                  [models[i] for i in missed], [keys[i] for i in missed])
                hits.update({k: row for k, (row, _) in adopted.items()})
        by_key: dict[str, Any] = {}
        for k, i in first_of.items():
            if k in hits:
                text, input_tokens, output_tokens, finish_reason, latency_s, model = hits[k][:6]
                by_key[k] = self._cached_response(
                    requests[i].request_id, text, input_tokens, output_tokens, finish_reason,
                    latency_s, model, k, include_raw, adopted[k][1] if k in adopted else "primary",
                )
        todo = [i for k, i in first_of.items() if k not in hits]

        async def answer(index: int) -> MinimaLlmResult:
            key = keys[index] if self._cache is not None else None
            return await self._call(requests[index], models[index], key, refresh, include_raw)

        try:
            answers = await run_batched_callable(
                todo,
                answer,
                batch_config=self.config.batch,
                progress=progress,
                label=label,
                total=len(requests) + cached_rows,
                cached_rows=cached_rows + sum(rows_per_key[k] for k in by_key),
                weights=[rows_per_key[keys[i]] for i in todo],
                draw_in_loop=draw_in_loop,
            )
        except BatchAborted as aborted:
            by_key.update({keys[i]: r for i, r in zip(todo, aborted.results, strict=True) if r is not None})
            raise BatchAborted(aborted.message, _spread(by_key, keys, requests)) from None
        finally:
            if self._cache is not None:
                await self._cache.aflush()
        by_key.update({keys[i]: r for i, r in zip(todo, answers, strict=True)})
        return _spread(by_key, keys, requests)

    def cache_stats(self) -> dict[str, Any]:
        """Entries, file size, and this process's hits and misses; ``{}`` without a cache."""
        return self._cache.stats() if self._cache is not None else {}

    def _adopt(self, requests: Sequence[MinimaLlmRequest], models: Sequence[str], keys: Sequence[str]) -> dict[str, Any]:
        """Misses answered by minima-llm's table, synonyms or lookup caches (cache/adoption.py)."""
        return self._adoption.find_requests(requests, models, keys) if self._adoption is not None else {}

    async def aclose(self) -> None:
        """Close this loop's HTTP pool and commit pending cache rows; the backend stays usable."""
        await self._caller.aclose()
        if self._cache is not None:
            await self._cache.aflush()

    def close(self) -> None:
        """Release everything for good (cache file and trace file); call from sync code at the end."""
        if self._adoption is not None:
            self._adoption.close()
        if self._cache is not None:
            self._cache.close()
        if self._tracer is not None:
            self._tracer.close()

    def __repr__(self) -> str:
        return (
            f"OpenAIMinimaLlm(base_url={self.config.base_url!r}, model={self.config.model!r}, "
            f"transport={self._caller.transport.name!r}, cache_dir={self.config.cache_dir!r})"
        )

    # -- internals -------------------------------------------------------------------------------

    def _key(self, request: MinimaLlmRequest, model: str) -> str | None:
        if self._cache is None:
            return None
        return self._traced(*cache_key(
            model, request.messages, request.temperature, request.max_tokens, request.extra,
            self.config.cache_namespace,
        ))

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

    def _payload(self, request: MinimaLlmRequest, model: str, key: str | None, refresh: bool) -> bytes:
        refresh_round = None
        seed_base = 0
        if refresh:
            ident = key or _dedupe_key(request, model)
            refresh_round = self._refresh_rounds.get(ident, 0)
            self._refresh_rounds[ident] = refresh_round + 1
            seed_base = int(ident[:8], 16)
        return encode(build_payload(
            request, model, refresh_round=refresh_round, seed_base=seed_base,
            retry_seed=get_retry_seed() if refresh else 0,
            ramp=(self.config.retry_temperature_max, self.config.retry_temperature_halflife),
        ))

    async def _call(
        self, request: MinimaLlmRequest, model: str, key: str | None, refresh: bool, include_raw: bool
    ) -> MinimaLlmResult:
        body = self._payload(request, model, key, refresh)
        token_estimate = len(body) // CHARS_PER_TOKEN + (request.max_tokens or 0)
        try:
            answer, latency, attempts = await self._caller.send(body, token_estimate)
        except CallError as err:
            if debug_trace_enabled():
                trace_exchange(request.request_id, body, f"{type(err).__name__}: {err}")
            return _failure(request, err, model, self.config.timeout_s)
        if debug_trace_enabled():
            trace_exchange(request.request_id, body, answer.raw_json or answer.text)
        self._pulse.record_call(answer.input_tokens, answer.output_tokens, latency)
        cache = self._cache  # not None whenever key is not None: keys are made for a cache only
        if key is not None and cache is not None:
            self._store(cache, key, request, model, answer, latency)
        return MinimaLlmResponse(
            request_id=request.request_id,
            text=answer.text,
            usage=Usage(answer.input_tokens, answer.output_tokens),
            finish_reason=answer.finish_reason,
            latency_s=latency,
            attempts=attempts,
            model=answer.model or model,
            raw=answer.raw if include_raw else None,
        )

    def _store(
        self, cache: PromptCache, key: str, request: MinimaLlmRequest, model: str,
        answer: ParsedAnswer, latency: float,
    ) -> None:
        params = {"temperature": request.temperature, "max_tokens": request.max_tokens, "extra": request.extra}
        cache.put_fields(
            key, self.config.cache_namespace, model, request.messages, params,  # encoded there as is
            answer.text, raw=answer.raw, input_tokens=answer.input_tokens,
            output_tokens=answer.output_tokens, finish_reason=answer.finish_reason, latency_s=latency,
            created_at=time.time(), raw_json=answer.raw_json, params_json=self._params_json(params),
        )

    def _params_json(self, params: dict[str, Any]) -> str | None:
        """The stored JSON of ``params`` when ``extra`` is None, made once per (temperature, max_tokens)."""
        if params["extra"] is not None:
            return None  # the cache encodes it
        fields = _memo_key(params["temperature"], params["max_tokens"])
        if fields is None:
            return None
        spelled = self._params_spelled.get(fields)
        if spelled is None:
            if len(self._params_spelled) >= 64:  # NaN never equals itself: keep the memo bounded
                self._params_spelled.clear()
            spelled = self._params_spelled[fields] = json.dumps(params, ensure_ascii=False)
        return spelled


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


def _dedupe_key(request: MinimaLlmRequest, model: str) -> str:
    """Identity of a request for de-duplication when there is no cache (same as the cache key)."""
    return cache_key(model, request.messages, request.temperature, request.max_tokens, request.extra)[0]


def _failure(request: MinimaLlmRequest, err: CallError, model: str, timeout_s: float) -> MinimaLlmFailure:
    return MinimaLlmFailure(
        request_id=request.request_id,
        error_type=type(err).__name__,
        message=str(err),
        status=err.status,
        attempts=err.attempts,
        retryable=err.retryable,
        model=model,
        body_snippet=err.body_snippet,
        timeout_s=timeout_s,
        attempt_timestamps=err.attempt_timestamps,
    )


def _spread(
    by_key: dict[str, Any], keys: list[str], requests: Sequence[MinimaLlmRequest]
) -> list[Any]:
    """One result per request, in input order: identical requests share an answer under their own id."""
    out = []
    for key, request in zip(keys, requests, strict=True):
        result = by_key.get(key)
        if result is not None and result.request_id != request.request_id:
            result = dataclasses.replace(result, request_id=request.request_id)
        out.append(result)
    return out
