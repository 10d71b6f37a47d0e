"""The proxy's one road upstream: every chat request through one ``OpenAIMinimaLlm``.

One backend means one cache, one pacer (and cooldown) and one retry policy for every client of
the proxy, whichever process it runs in. On top of the backend the relay sends identical
requests that are in flight at the same time once: ten notebooks asking the same new prompt at
once cost one upstream call, and the nine others are answered as hits when it returns. The call
runs in the first asker's own handler (no task of its own: a miss is most of what a first run
sends, and a task and a shield per miss cost more than the rest of the relay); the others wait
on a future it fills. The server runs its handlers with ``handler_cancellation=False``, so a
client that hangs up does not cancel the call the others wait for, and its answer still lands in
the cache. A request with nothing identical in flight whose cache key the
caller hands over is first looked up on the hit path (:mod:`.hits`): a stored answer is returned
there and then, with no task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from ...cache import cache_key
from ...engine.backend import OpenAIMinimaLlm
from ...types import MinimaLlmRequest, MinimaLlmResult
from .hits import HitPath, StoredHit
from .metrics import ProxyMetrics

__all__ = ["Relay"]


class Relay:
    """Answers proxy requests through ``backend``, one upstream call per distinct request in flight."""

    def __init__(self, backend: OpenAIMinimaLlm, metrics: ProxyMetrics) -> None:
        self.backend = backend
        self.metrics = metrics
        self._default_model = backend.config.model
        self._flights: dict[Hashable, asyncio.Future[MinimaLlmResult]] = {}
        self._hits = HitPath(backend)

    async def answer(self, request: MinimaLlmRequest, refresh: bool = False, *,
                     identity: Hashable | None = None,
                     cached_key: str | None = None) -> tuple[MinimaLlmResult | StoredHit, bool]:
        """``(result, answered without an upstream call)``; ``refresh`` skips the cache lookup.

        A stored answer comes back as a :class:`StoredHit` (its body as stored); anything else
        as the backend's result, which carries the upstream's body in ``raw``.
        ``identity`` names the request among those in flight (default: its cache key); the
        app passes the model and the body bytes, which identical clients send identically and
        which cost nothing to compare, so a cache hit does not pay for its key twice.
        ``cached_key`` (the request's :meth:`key`) asks for the hit path: the stored answer is
        read under that key before anything else; without it the backend does the lookup.
        """
        name = identity if identity is not None else cache_key(
            request.model or self._default_model, request.messages, request.temperature,
            request.max_tokens, request.extra)[0]
        flight = self._flights.get(name)
        if flight is not None:  # the same request is on its way: share its answer
            result = await asyncio.shield(flight)
            self.metrics.hits += 1
            return result, True
        if cached_key is not None and not refresh:
            stored = self._hits.find(request, cached_key)
            if stored is not None:
                self.metrics.hits += 1
                return stored, True
        result = await self._fly(name, request, refresh)
        if result.cached:
            self.metrics.hits += 1
        else:
            self.metrics.misses += 1
        return result, result.cached

    def key(self, request: MinimaLlmRequest) -> str | None:
        """``request``'s cache key as the hit path looks it up (None without a hit path)."""
        return self._hits.key(request)

    async def _fly(self, name: Hashable, request: MinimaLlmRequest, refresh: bool) -> MinimaLlmResult:
        """The backend's answer to ``request``, shared with identical requests that arrive meanwhile."""
        flight: asyncio.Future[MinimaLlmResult] = asyncio.get_running_loop().create_future()
        self._flights[name] = flight
        try:
            result = await self.backend.generate(request, refresh, include_raw=True)
        except BaseException as exc:  # the server stopping (a cancel), or a fault: waiters share it
            if isinstance(exc, asyncio.CancelledError):
                flight.cancel()
            else:
                flight.set_exception(exc)
                flight.exception()  # said by the handlers that wait, not again as "never retrieved"
            raise
        else:
            flight.set_result(result)
        finally:
            if self._flights.get(name) is flight:
                del self._flights[name]
        return result

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for calls still in flight, so their answers are cached."""
        pending = list(self._flights.values())
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
