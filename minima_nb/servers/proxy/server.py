"""``ProxyServer``: the caching proxy's lifecycle (start, serve, stop), sync or async.

``with ProxyServer(config) as proxy:`` serves from a private event loop in a daemon thread and
returns once listening; ``async with`` serves on the running loop; ``await proxy.run()`` serves
until cancelled. A stop is graceful: requests being answered get ``shutdown_timeout_s`` to
finish, then the upstream pool is closed and every answer received is committed to the cache.

Listening anywhere but on the loopback interface without a token is refused: anyone who can
reach the port would be spending the upstream key.

The private loop of ``start()`` (and so of ``minima-nb proxy``) is uvloop's when uvloop is
installed (the ``fast`` extra) and ``event_loop="auto"``: it serves a cache hit with less CPU.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import threading
from typing import Any

from aiohttp import web

from ...config import MinimaLlmConfig
from ...engine.backend import OpenAIMinimaLlm
from ...engine.transports import make_transport
from ...environment import proxy_token_from_env
from ...errors import ConfigError
from .app import DEFAULT_MAX_BODY_BYTES, ProxyApp
from .metrics import CountingTransport, ProxyMetrics
from .relay import Relay

__all__ = ["ProxyServer"]

_START_TIMEOUT_S = 30.0
EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ProxyServer:
    """An OpenAI-compatible caching proxy in front of ``config``'s upstream.

    ``config`` defaults to :meth:`MinimaLlmConfig.from_env`. ``port=0`` picks a free port (read
    it from :attr:`port` or :attr:`base_url`). ``token`` (default: ``MINIMA_PROXY_TOKEN``)
    makes clients send ``Authorization: Bearer <token>``; it is required to listen on anything
    but loopback. ``force_model=True`` answers every request with ``config.model``, whatever
    model the client names. Bodies over ``max_body_bytes`` get 413. ``verbose=True`` prints a
    line per chat request (minima-llm's option). ``event_loop`` picks the loop ``start()`` serves
    on: ``"auto"`` (uvloop if installed, else asyncio's), ``"asyncio"`` or ``"uvloop"``.

    >>> with ProxyServer(config, port=0) as proxy:                              # doctest: +SKIP
    ...     client = openai.OpenAI(base_url=proxy.base_url, api_key="anything")
    """

    def __init__(self, config: MinimaLlmConfig | None = None, *, host: str = "127.0.0.1",
                 port: int = 8990, token: str | None = None, force_model: bool = False,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 shutdown_timeout_s: float = 10.0, verbose: bool = False,
                 event_loop: str = "auto") -> None:
        config = config if config is not None else MinimaLlmConfig.from_env()
        token = token if token is not None else proxy_token_from_env()
        if not is_loopback(host) and not token:
            raise ConfigError(
                f"refusing to listen on {host!r} without a token: anyone who can reach that address "
                "would spend your API key. Set MINIMA_PROXY_TOKEN (or pass token=...) so clients "
                "must send 'Authorization: Bearer <token>', or listen on 127.0.0.1."
            )
        if max_body_bytes < 1:
            raise ConfigError(f"max_body_bytes={max_body_bytes} must be at least 1.")
        self._uvloop = _want_uvloop(event_loop)
        self.config = config
        self.metrics = ProxyMetrics()
        self._host, self._requested_port = host, port
        self._token, self._force_model = token or None, force_model
        self._max_body_bytes = max_body_bytes
        self._shutdown_timeout_s = shutdown_timeout_s
        self._verbose = verbose
        self._backend: OpenAIMinimaLlm | None = None
        self._relay: Relay | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread_stop: asyncio.Event | None = None

    def __repr__(self) -> str:  # neither the token nor the key
        state = f"url={self.url!r}" if self._port else "stopped"
        return f"ProxyServer({state}, upstream={self.config.base_url!r})"

    # -- addresses --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port actually bound (valid while running)."""
        if self._port is None:
            raise RuntimeError("ProxyServer is not running; start it first")
        return self._port

    @property
    def url(self) -> str:
        """The proxy's root, e.g. ``http://127.0.0.1:8990``."""
        host = self._host
        if host in ("", "0.0.0.0", "::"):  # every interface: loopback is one of them
            host = "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL clients use, e.g. ``http://127.0.0.1:8990/v1``."""
        return self.url + "/v1"

    @property
    def backend(self) -> OpenAIMinimaLlm | None:
        """The one backend every request goes through (None while stopped)."""
        return self._backend

    # -- async lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> ProxyServer:
        await self.astart()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.astop()

    async def run(self) -> None:
        """Serve on the running loop until cancelled, then stop gracefully."""
        await self.astart()
        try:
            await asyncio.Event().wait()
        finally:
            await self.astop()

    async def astart(self) -> None:
        """Start listening on the running loop."""
        if self._runner is not None:
            raise RuntimeError("ProxyServer is already running")
        config = self.config
        upstream = CountingTransport(make_transport(config.transport), self.metrics,
                                     compress_gzip=config.compress_gzip)
        backend = OpenAIMinimaLlm(config, transport=upstream)
        relay = Relay(backend, self.metrics)
        app = ProxyApp(relay, self.metrics, token=self._token, force_model=self._force_model,
                       max_body_bytes=self._max_body_bytes, verbose=self._verbose,
                       upstream=upstream).application()
        # handler_cancellation=False (aiohttp's default since 3.9, said here because the relay
        # relies on it): a client hanging up does not cancel the upstream call that its handler
        # makes for every identical request in flight, nor the answer's way into the cache.
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=self._shutdown_timeout_s, handler_cancellation=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._requested_port).start()
        except BaseException:
            await runner.cleanup()
            backend.close()
            raise
        self._backend, self._relay, self._runner = backend, relay, runner
        self._port = runner.addresses[0][1]

    async def astop(self) -> None:
        """Stop gracefully: finish the requests being answered, close upstream, commit the cache."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        backend, relay = self._backend, self._relay
        try:
            await runner.cleanup()
            if relay is not None:
                await relay.drain(self._shutdown_timeout_s)
            if backend is not None:
                await backend.aclose()
        finally:
            if backend is not None:
                backend.close()
            self._backend = self._relay = None
            self._port = None

    # -- sync lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> ProxyServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> ProxyServer:
        """Serve from a private event loop in a daemon thread; returns once listening."""
        if self._thread is not None or self._runner is not None:
            raise RuntimeError("ProxyServer is already running")
        ready = threading.Event()
        outcome: dict[str, Any] = {}
        thread = threading.Thread(target=self._serve_in_thread, args=(ready, outcome),
                                  name="minima-nb-proxy", daemon=True)
        thread.start()
        if not ready.wait(_START_TIMEOUT_S):
            raise RuntimeError("the proxy did not start listening within 30 s")
        if "error" in outcome:
            thread.join(timeout=5)
            raise outcome["error"]
        self._thread = thread
        return self

    def stop(self) -> None:
        """Stop a proxy started with ``start()`` (graceful, as :meth:`astop`); waits for it."""
        thread, loop, event = self._thread, self._thread_loop, self._thread_stop
        if thread is None or loop is None or event is None:
            return
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # the loop already ended
            pass
        thread.join(timeout=self._shutdown_timeout_s + 30)
        self._thread = self._thread_loop = self._thread_stop = None

    def _serve_in_thread(self, ready: threading.Event, outcome: dict[str, Any]) -> None:
        async def serve() -> None:
            self._thread_loop = asyncio.get_running_loop()
            self._thread_stop = stop = asyncio.Event()
            try:
                await self.astart()
            except BaseException as exc:
                outcome["error"] = exc
                return
            finally:
                ready.set()
            try:
                await stop.wait()
            finally:
                await self.astop()

        if self._uvloop:
            import uvloop

            uvloop.run(serve())
        else:
            asyncio.run(serve())

    @property
    def event_loop(self) -> str:
        """The loop ``start()`` serves on: ``"uvloop"`` or ``"asyncio"``."""
        return "uvloop" if self._uvloop else "asyncio"


GC_YOUNG_THRESHOLD = 5_000  # objects made before a young collection (CPython's default: 700)


def tune_gc_for_serving() -> None:
    """Set the garbage collector for a process that is a proxy and nothing else (the CLI's).

    What starting made (every imported module: pandas, aiohttp, the app) lives as long as the
    process, so it is frozen out of the collector's care: a full collection under load then
    walks the requests' own objects, not some 80,000 that never die. And a young collection
    waits for 5,000 new objects, not 700: a request's objects are nearly all gone by then, so
    fewer survivors are promoted and walked again. Together about a sixth of a cache miss's
    CPU (bench scenario 8). Process-wide, so never done for a proxy started inside a notebook.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _want_uvloop(event_loop: str) -> bool:
    if event_loop not in EVENT_LOOPS:
        raise ConfigError(f"event_loop={event_loop!r} is not one of {', '.join(EVENT_LOOPS)}.")
    if event_loop == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if event_loop == "uvloop":
            raise ConfigError("event_loop='uvloop' needs uvloop: pip install 'minima-nb[fast]' "
                              "(or uvloop), or pass event_loop='auto'.") from None
        return False
    return True
