"""The lean HTTP/1.1 client: kept-alive connections on asyncio protocols, answers parsed by httptools.

:class:`Http1Transport` is the transport ``transport="auto"`` (the default) picks when
httptools is installed (the ``fast`` extra). It does what a chat-completions client needs and
no more, which is what makes it cheap: a request with a body of known length over a kept-alive
plain or TLS connection, and one answer read back (status, headers, and a body framed by
Content-Length, by chunks, or by the connection's end; gzip or deflate undone). On it the
whole engine spends 0.42× the CPU per request it spends on aiohttp's client (benchmarks/
RESULTS.md, scenario 14): aiohttp's request machinery was most of a first pass's loop thread.

Like the other transports: one pool of connections per event loop, redirects returned as
answers and never followed (the key only goes to ``base_url``'s host), no cookies, no proxy
from the environment, and only ConnectError and RequestTimeout raised. A connection that the
server closed while it sat idle is either seen closing before it is used or fails before a
byte of the answer came back; the request then goes once more on a new connection.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .._version import __version__
from ..errors import ConfigError, ConnectError
from .looplocal import LoopLocal
from .transport import HttpReply, Transport, _first_line, safe_url

KEEPALIVE_S = 60.0  # an idle connection older than this is closed rather than used
_MAX_KEPT = 256  # URLs and request heads kept ready (one per URL and set of headers: in practice a few)
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class ReplyHeaders(Mapping[str, str]):
    """An answer's headers, read in any case; a repeated header's values joined by ", "."""

    __slots__ = ("_values",)

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        values: dict[str, str] = {}
        for name, value in pairs:
            lowered = name.lower()
            values[lowered] = f"{values[lowered]}, {value}" if lowered in values else value
        self._values = values

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:  # noqa: D102 - Mapping.get, one lookup
        return self._values.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"ReplyHeaders({self._values!r})"


@dataclass(frozen=True)
class _Target:
    """What a URL says about where to send: origin, TLS, request target, Host header."""

    origin: tuple[str, str, int]
    host: str
    port: int
    tls: bool
    path: str
    host_header: str


class _Dropped(Exception):
    """The connection ended before the answer was complete; ``started``: a byte of it came."""

    def __init__(self, reason: str, started: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.started = started


class _TimedOut(Exception):
    """The request's deadline passed."""


class _Connection(asyncio.Protocol):
    """One kept-alive connection: sends a request, parses its answer with httptools."""

    def __init__(self, loop: asyncio.AbstractEventLoop, parser_type: Any) -> None:
        self._loop = loop
        self._parser = parser_type(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._answer: asyncio.Future[tuple[int, list[tuple[str, str]], bytes, bool]] | None = None
        self._pairs: list[tuple[str, str]] = []
        self._chunks: list[bytes] = []
        self._status = 0
        self._started = False
        self._headers_done = False

    # -- sending ------------------------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[tuple[int, list[tuple[str, str]], bytes, bool]]:
        """Write one request; the future gives (status, header pairs, body, keep-alive)."""
        self._answer = answer = self._loop.create_future()
        self._pairs, self._chunks, self._status = [], [], 0
        self._started = self._headers_done = False
        assert self.transport is not None  # set by connection_made before the pool hands it out
        self.transport.write(data)
        return answer

    def expire(self) -> None:
        """The deadline passed: fail the answer and drop the connection (it is mid-answer)."""
        self._fail(_TimedOut())
        self.abort()

    def abort(self) -> None:
        """Close at once, without waiting for buffered writes."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close after buffered writes (an idle connection, or one the server will not keep)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def usable(self) -> bool:
        """Open, and neither side has started closing it."""
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    # -- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        self.transport = transport  # type: ignore[assignment]  # a stream transport: TCP or TLS

    def data_received(self, data: bytes) -> None:  # noqa: D102
        if self._answer is None or self._answer.done():
            self.abort()  # bytes nobody asked for: the connection can no longer be trusted
            return
        self._started = True
        try:
            self._parser.feed_data(data)
        except Exception as exc:  # httptools.HttpParserError and its kinds
            self._fail(_Dropped(f"malformed answer ({type(exc).__name__}: {exc})", True))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        self.closed = True
        answer = self._answer
        if answer is None or answer.done():
            return
        if self._headers_done and self._framed_by_close():
            self._finish(keep_alive=False)
            return
        reason = "the server closed the connection" + (f" ({type(exc).__name__}: {exc})" if exc else "")
        answer.set_exception(_Dropped(reason, self._started))

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:  # noqa: D102
        self._pairs.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:  # noqa: D102
        self._status = self._parser.get_status_code()
        self._headers_done = True

    def on_body(self, body: bytes) -> None:  # noqa: D102
        self._chunks.append(body)

    def on_message_complete(self) -> None:  # noqa: D102
        if 100 <= self._status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            self._pairs, self._chunks, self._status, self._headers_done = [], [], 0, False
            return
        self._finish(keep_alive=self._parser.should_keep_alive())

    # -- internals ------------------------------------------------------------------------------

    def _framed_by_close(self) -> bool:
        """The answer has neither a length nor chunks: its body ends with the connection."""
        names = {name.lower(): value for name, value in self._pairs}
        return "content-length" not in names and "chunked" not in names.get("transfer-encoding", "").lower()

    def _finish(self, keep_alive: bool) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            chunks = self._chunks
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            answer.set_result((self._status, self._pairs, body, keep_alive))

    def _fail(self, error: Exception) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_exception(error)


class _Pool:
    """One event loop's connections: idle ones per origin, and every one for closing."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self.open: weakref.WeakSet[_Connection] = weakref.WeakSet()

    def take(self, origin: tuple[str, str, int], now: float) -> _Connection | None:
        """An idle connection to ``origin`` still fit to use, or None."""
        idle = self.idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.usable() and now - connection.idle_since < KEEPALIVE_S:
                return connection
            connection.close()
        return None

    def give_back(self, origin: tuple[str, str, int], connection: _Connection, now: float) -> None:
        """Keep ``connection`` for the next request to ``origin``."""
        connection.idle_since = now
        self.idle.setdefault(origin, []).append(connection)

    def close_all(self) -> None:
        """Close every connection of this loop (an idle one at once, a busy one too)."""
        for connection in list(self.open):
            connection.close()
        self.idle.clear()

    def forget(self) -> None:
        """The loop has closed and its sockets with it: just drop the references."""
        self.idle.clear()


async def _close_pool(pool: _Pool) -> None:
    pool.close_all()


class Http1Transport(Transport):
    """HTTP/1.1 on asyncio protocols, answers parsed by httptools; a pool per event loop."""

    name = "http1"

    def __init__(self, *, compress_gzip: bool = False) -> None:
        super().__init__(compress_gzip=compress_gzip)
        import httptools  # the `fast` extra; make_transport checks it is there

        self._parser_type = httptools.HttpResponseParser
        self._pools: LoopLocal[_Pool] = LoopLocal(_Pool, _Pool.forget, _close_pool)
        weakref.finalize(self, LoopLocal.release_all, self._pools)
        self._targets: dict[str, _Target] = {}
        self._heads: dict[tuple[Any, ...], bytes] = {}
        self._tls: ssl.SSLContext | None = None

    async def request(  # noqa: D102
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str],
        timeout_s: float,
    ) -> HttpReply:
        target = self._targets.get(url) or self._target(url)
        data = self._head(method, url, target, headers, len(body) if body else 0) + (body or b"")
        pool = await self._pools.aget()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        error: Exception
        while True:
            connection = pool.take(target.origin, loop.time())
            reused = connection is not None
            try:
                if connection is None:
                    connection = await self._connect(loop, target, deadline)
                    pool.open.add(connection)
                timer = loop.call_at(deadline, connection.expire)
                try:
                    status, pairs, payload, keep_alive = await connection.send(data)
                finally:
                    timer.cancel()
            except _Dropped as dropped:
                if reused and not dropped.started:
                    continue  # closed by the server while idle: it never answered, so send it afresh
                error = self._dropped(url, dropped.reason)
                break
            except _TimedOut:
                error = self._timeout(url, timeout_s)
                break
            except OSError as exc:  # refused, unreachable, no such host, TLS failed
                error = self._cannot_connect(url, exc.strerror or _first_line(exc) or type(exc).__name__)
                break
            except BaseException:  # cancelled mid-answer: the connection cannot be used again
                if connection is not None:
                    connection.abort()
                raise
            if keep_alive and connection.usable():
                pool.give_back(target.origin, connection, loop.time())
            else:
                connection.close()
            reply_headers = ReplyHeaders(pairs)
            encoding = reply_headers.get("content-encoding")
            if encoding is not None and encoding.lower() != "identity":
                payload = self._decoded(url, payload, encoding.lower())
            return HttpReply(status, reply_headers, payload)
        raise error  # outside the except blocks: no library exception rides along as __context__

    async def aclose(self) -> None:  # noqa: D102
        pool = self._pools.pop_current()
        if pool is not None:
            pool.close_all()

    # -- internals ----------------------------------------------------------------------------

    async def _connect(self, loop: asyncio.AbstractEventLoop, target: _Target, deadline: float) -> _Connection:
        tls = self._tls_context() if target.tls else None
        opening = loop.create_connection(
            lambda: _Connection(loop, self._parser_type), target.host, target.port, ssl=tls,
            server_hostname=target.host if tls is not None else None)
        try:
            _, connection = await asyncio.wait_for(opening, max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise _TimedOut() from None
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()  # the system's CAs (SSL_CERT_FILE honoured)
        return self._tls

    def _target(self, url: str) -> _Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"cannot send to {safe_url(url)!r}: only http:// and https:// URLs with a host.")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        target = _Target((parts.scheme, host, port), host, port, tls, path,
                         f"{shown}:{parts.port}" if parts.port else shown)
        if len(self._targets) >= _MAX_KEPT:
            self._targets.clear()
        self._targets[url] = target
        return target

    def _head(self, method: str, url: str, target: _Target, headers: Mapping[str, str], length: int) -> bytes:
        """The request line and headers, up to the body; made once per URL and set of headers."""
        key = (method, url, *headers.items())
        prefix = self._heads.get(key)
        if prefix is None:
            lines = [f"{method} {target.path} HTTP/1.1", f"Host: {target.host_header}",
                     f"User-Agent: minima-nb/{__version__}", "Accept-Encoding: gzip, deflate"]
            for name, value in headers.items():
                if name.lower() in _OWN_HEADERS:
                    continue
                if any(c in f"{name}{value}" for c in "\r\n\0"):
                    # Said without the value: it may be the API key.
                    raise ConfigError(f"the header {name!r} holds a line break; remove it from the value.")
                lines.append(f"{name}: {value}")
            try:
                prefix = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
            except UnicodeEncodeError:
                raise ConfigError("a request header holds characters HTTP headers cannot carry "
                                  "(only Latin-1); check the API key and extra headers.") from None
            if len(self._heads) >= _MAX_KEPT:
                self._heads.clear()
            self._heads[key] = prefix
        return prefix + b"%d\r\n\r\n" % length

    def _decoded(self, url: str, payload: bytes, encoding: str) -> bytes:
        """The body with its gzip or deflate encoding undone."""
        try:
            if encoding in ("gzip", "x-gzip"):
                return zlib.decompress(payload, 16 + zlib.MAX_WBITS)
            if encoding == "deflate":  # zlib-wrapped as the standard says, or raw as some servers send
                try:
                    return zlib.decompress(payload)
                except zlib.error:
                    return zlib.decompress(payload, -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise ConnectError(f"the answer from {safe_url(url)} is not valid {encoding} ({exc})") from None
        raise ConnectError(f"the answer from {safe_url(url)} is {encoding}-encoded, which the http1 transport "
                           "cannot read; set transport='aiohttp' (MINIMA_TRANSPORT=aiohttp).")

