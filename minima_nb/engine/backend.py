"""``OpenAIMinimaLlm``: one request through cache → pacing → retry → transport, and batches of them.

The backend is thin glue, and (with :mod:`.backend_cache`, its cache side: keys, lookups,
stored answers) the one place where the engine meets the prompt cache. It owns a
:class:`~.call.Caller` (transport, pacer, retry policy: the wire side) and the prompt cache.
It can be used from several event loops one after another: everything loop-bound is created
lazily per loop.

``generate`` never raises for a failed call: it returns a :class:`MinimaLlmFailure`. It raises
only for programming errors (a malformed message list, a wrong argument type).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from ..cache import cache_key
from ..config import MinimaLlmConfig
from ..controls import debug_trace_enabled, get_retry_seed, set_last_cached, trace_exchange
from ..errors import BatchAborted, CallError
from ..types import MinimaLlmFailure, MinimaLlmRequest, MinimaLlmResponse, MinimaLlmResult, Usage
from .backend_cache import CacheSide
from .call import Caller
from .pacer import RatePacer
from .pool import ProgressArg, run_batched_callable
from .pulse import BackendPulse
from .spellings import PredecessorSpellings
from .transport import Transport
from .validation import send_checked
from .wire import build_payload, check_messages, encode

CHARS_PER_TOKEN = 4  # rough prompt-size estimate for tokens-per-minute pacing


class OpenAIMinimaLlm(CacheSide, PredecessorSpellings):
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
        self._open_cache(config)  # the cache side's state: backend_cache.py
        self._refresh_rounds: dict[str, int] = {}
        self._pulse = BackendPulse()

    # -- public API ------------------------------------------------------------------------------

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
        looked_up_keys: Sequence[str] | None = None,
    ) -> list[MinimaLlmResult]:
        """Answer many requests; results in input order, one per request (a failure in its slot).

        Cached answers are read in bulk before any request goes out; identical requests are sent
        once; the batch stops with ``BatchAborted`` past ``batch.max_failures`` failures.
        ``cached_rows`` counts rows the caller already answered with :meth:`lookup`: progress
        shows them as cached rows of the same batch. ``looked_up_keys`` are the requests'
        cache keys as :meth:`lookup_keyed` made them, from a lookup that found none of them:
        they are then sent without being keyed and looked up a second time.
        """
        for r in requests:
            check_messages(r.request_id, r.messages)
        refresh = force_refresh or self.config.force_refresh
        models = [r.model or self.config.model for r in requests]
        if looked_up_keys is not None and len(looked_up_keys) != len(requests):
            raise ValueError(f"looked_up_keys has {len(looked_up_keys)} keys for {len(requests)} requests; "
                             "pass one key per request, in the same order, or none.")
        looked_up = looked_up_keys is not None and self._cache is not None and not refresh
        keys = list(looked_up_keys) if looked_up_keys is not None and looked_up else self._keys(requests, models)
        rows_per_key = Counter(keys)
        first_of: dict[str, int] = {}
        for i, k in enumerate(keys):
            first_of.setdefault(k, i)
        cache = self._cache
        hits: dict[str, tuple[Any, ...]] = {}
        adopted: dict[str, tuple[tuple[Any, ...], str]] = {}
        if cache is not None and looked_up:
            cache.count_misses(len(first_of))  # lookup_keyed left its misses uncounted
        elif cache is not None and not refresh:
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
            raise type(aborted)(aborted.message, _spread(by_key, keys, requests)) from None  # BudgetExceeded too
        finally:
            if self._cache is not None:
                await self._cache.aflush()
        by_key.update({keys[i]: r for i, r in zip(todo, answers, strict=True)})
        return _spread(by_key, keys, requests)

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
        if self._batch_collector is not None:  # inside batch_mode(): a cache miss is collected, not sent
            return self._batch_collector.collect(request, model, key)
        body = self._payload(request, model, key, refresh)
        token_estimate = len(body) // CHARS_PER_TOKEN + (request.max_tokens or 0)
        try:
            answer, latency, attempts = await send_checked(  # a schema check may ask again
                self._caller, body, token_estimate, lambda: self._payload(request, model, key, True))
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
