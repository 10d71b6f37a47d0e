"""The proxy's counters: what clients asked, what the cache answered, what went upstream.

:class:`ProxyMetrics` holds plain integers written only on the proxy's event loop (reads from
other threads see a recent value, which is all a heartbeat or a test needs). It renders itself
as Prometheus text (``GET /metrics``) and as the one-line heartbeat of ``minima-nb proxy``.
:class:`CountingTransport` wraps the engine's transport so that every upstream attempt, retries
included, and every upstream 429 is counted without the engine knowing about the proxy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from ...engine.transport import HttpReply, Transport

__all__ = ["CountingTransport", "ProxyMetrics"]

# (attribute, Prometheus name, type, help)
_SERIES = (
    ("requests", "minima_proxy_requests_total", "counter", "Chat requests received."),
    ("hits", "minima_proxy_cache_hits_total", "counter",
     "Chat requests answered without an upstream call (cache, or an identical request in flight)."),
    ("misses", "minima_proxy_cache_misses_total", "counter", "Chat requests sent upstream."),
    ("errors", "minima_proxy_errors_total", "counter", "Requests answered with an error status."),
    ("in_flight", "minima_proxy_in_flight", "gauge", "Chat requests being answered now."),
    ("upstream_requests", "minima_proxy_upstream_requests_total", "counter",
     "HTTP attempts sent upstream, retries included."),
    ("upstream_429", "minima_proxy_upstream_429_total", "counter",
     "Upstream answers with status 429 (retried by the proxy, not passed on)."),
)


class ProxyMetrics:
    """Counters of one proxy; written on its event loop only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.requests = 0
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.in_flight = 0
        self.upstream_requests = 0
        self.upstream_429 = 0

    def snapshot(self) -> dict[str, int]:
        """Every counter by name."""
        return {name: getattr(self, name) for name, *_ in _SERIES}

    def prometheus(self) -> str:
        """The counters in the Prometheus text exposition format (version 0.0.4)."""
        lines = []
        for name, series, kind, help_text in _SERIES:
            lines += [f"# HELP {series} {help_text}", f"# TYPE {series} {kind}",
                      f"{series} {getattr(self, name)}"]
        lines += ["# HELP minima_proxy_uptime_seconds Seconds since the proxy started.",
                  "# TYPE minima_proxy_uptime_seconds gauge",
                  f"minima_proxy_uptime_seconds {self._clock() - self.started:.3f}"]
        return "\n".join(lines) + "\n"

    def line(self) -> str:
        """The heartbeat: ``proxy: 120 requests (100 hits, 20 misses), 3 in flight, ...``."""
        return (f"proxy: {self.requests:,} requests ({self.hits:,} hits, {self.misses:,} misses), "
                f"{self.in_flight} in flight, {self.errors:,} errors, "
                f"upstream {self.upstream_requests:,} sent / {self.upstream_429:,} x 429")


class CountingTransport(Transport):
    """A transport that counts each upstream attempt and 429 into ``metrics``, then delegates.

    Compression stays with this wrapper (``post_json`` of the base class) and the wrapped
    transport gets the finished body.
    """

    def __init__(self, inner: Transport, metrics: ProxyMetrics, *, compress_gzip: bool = False) -> None:
        super().__init__(compress_gzip=compress_gzip)
        self.inner = inner
        self.metrics = metrics
        self.name = inner.name

    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      headers: Mapping[str, str], timeout_s: float) -> HttpReply:
        """Send through the wrapped transport, counting the attempt and its status."""
        self.metrics.upstream_requests += 1
        reply = await self.inner.request(method, url, body=body, headers=headers, timeout_s=timeout_s)
        if reply.status == 429:
            self.metrics.upstream_429 += 1
        return reply

    async def aclose(self) -> None:
        """Close the wrapped transport's pool on the running loop."""
        await self.inner.aclose()

    def __repr__(self) -> str:
        return f"<CountingTransport of {self.inner!r}>"
