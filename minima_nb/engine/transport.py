"""The HTTP seam: "send this request, give me status, headers and body".

Three implementations pass one contract suite: :class:`~.http1.Http1Transport` (the default
when httptools is installed: HTTP/1.1 on asyncio protocols, in its own module),
:class:`AiohttpTransport` (the default without it: ~120 µs of client CPU per request here,
against ~2,400 µs for httpx, see FACTS.md) and :class:`HttpxTransport` (for users who bring an
``httpx.AsyncClient`` or ask for ``transport="httpx"``).

Each keeps one keep-alive connection pool per event loop, created on the loop that first sends
and closed by ``aclose()`` on that loop. Library exceptions are translated here: nothing above
this module sees an aiohttp or httpx type, only :class:`~minima_nb.errors.ConnectError` and
:class:`~minima_nb.errors.RequestTimeout`. Redirects are never followed, so the Authorization
header only ever goes to the configured host. Messages never carry headers (the key lives there)
or URL credentials.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import os
import weakref
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConnectError, RequestTimeout
from .looplocal import LoopLocal


@dataclass(frozen=True)
class HttpReply:
    """One HTTP answer. ``headers`` is a case-insensitive mapping."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def safe_url(url: str) -> str:
    """``url`` without user:password, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


class Transport:
    """Base of the two transports: gzip and the shared error wording."""

    name = "base"

    def __init__(self, *, compress_gzip: bool = False) -> None:
        self.compress_gzip = compress_gzip

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str],
        timeout_s: float,
    ) -> HttpReply:
        """Send one request and return the reply; raise ConnectError or RequestTimeout."""
        raise NotImplementedError

    def post_json(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> Awaitable[HttpReply]:
        """POST an already-serialised JSON body (gzip-compressed when configured); await it.

        The request's own coroutine is returned, not wrapped in one more: this runs once per
        request, and every level of coroutine is passed through each time the request resumes.
        """
        if self.compress_gzip:
            body = gzip.compress(body, compresslevel=5)
            headers = {**headers, "Content-Encoding": "gzip"}
        return self.request("POST", url, body=body, headers=headers, timeout_s=timeout_s)

    async def aclose(self) -> None:
        """Close the running loop's connection pool; the next request opens a new one."""

    def _timeout(self, url: str, timeout_s: float) -> RequestTimeout:
        return RequestTimeout(f"no complete answer from {safe_url(url)} within {timeout_s:g}s (timeout_s)")

    def _cannot_connect(self, url: str, detail: str) -> ConnectError:
        return ConnectError(
            f"cannot connect to {safe_url(url)} ({_host_port(url)}): {detail}. "
            "Check that the server is running and that base_url (OPENAI_BASE_URL) is right."
        )

    def _dropped(self, url: str, detail: str) -> ConnectError:
        return ConnectError(f"connection to {safe_url(url)} dropped before the answer was complete: {detail}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} gzip={self.compress_gzip}>"


class AiohttpTransport(Transport):
    """aiohttp ClientSession per event loop, keep-alive, no redirects."""

    name = "aiohttp"

    def __init__(self, *, compress_gzip: bool = False) -> None:
        super().__init__(compress_gzip=compress_gzip)
        import aiohttp

        self._aiohttp = aiohttp
        self._timeouts: dict[float, Any] = {}
        # A backend used without aclose() (the seed's multi-loop pattern, a crash) must not leave
        # sessions that warn "Unclosed client session": close each when its loop shuts down.
        self._sessions: LoopLocal[Any] = LoopLocal(
            functools.partial(_new_aiohttp_session, aiohttp), _forget_session, _close_session
        )
        # And when this transport is dropped while a loop still runs (a throwaway backend in a
        # notebook), hand each session to its loop to close; the factory above holds no
        # reference to self, so the transport can be collected.
        weakref.finalize(self, LoopLocal.release_all, self._sessions)

    def _client_timeout(self, timeout_s: float) -> Any:
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            timeout = self._timeouts[timeout_s] = self._aiohttp.ClientTimeout(total=timeout_s)
        return timeout

    async def request(  # noqa: D102
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str],
        timeout_s: float,
    ) -> HttpReply:
        aiohttp = self._aiohttp
        session = await self._sessions.aget()
        # The translated error is raised after the except block: raising inside it would keep
        # aiohttp's exception as __context__, whose traceback holds the session in a cycle.
        try:
            async with session.request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=self._client_timeout(timeout_s),
                allow_redirects=False,
            ) as resp:
                payload = await resp.read()
                return HttpReply(resp.status, resp.headers, payload)
        except asyncio.TimeoutError:
            error: Exception = self._timeout(url, timeout_s)
        except aiohttp.ClientConnectorError as exc:
            error = self._cannot_connect(url, _os_reason(exc.os_error))
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            error = self._dropped(url, type(exc).__name__)
        except aiohttp.ClientError as exc:
            error = self._dropped(url, f"{type(exc).__name__}: {_first_line(exc)}")
        raise error

    async def aclose(self) -> None:  # noqa: D102
        session = self._sessions.pop_current()
        if session is not None:
            await session.close()


def _new_aiohttp_session(aiohttp: Any) -> Any:
    # Concurrency is bounded by the backend's own semaphore; a connector limit would only
    # queue requests inside aiohttp, where the wait would eat into their timeout.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    return aiohttp.ClientSession(connector=connector, auto_decompress=True)


async def _close_session(session: Any) -> None:
    await session.close()


def _forget_session(session: Any) -> None:
    """Mark a session whose loop has closed as closed, so it does not warn when collected.

    Its sockets died with the loop; aiohttp's public ``close()`` needs that loop, so use the
    connector's synchronous part, which skips loop work when the loop is closed.
    """
    connector = getattr(session, "_connector", None)
    close_now = getattr(connector, "_close", None)
    if close_now is not None:
        try:
            close_now()
        except Exception:  # best effort on a dead loop; nothing left to release
            pass


class HttpxTransport(Transport):
    """httpx.AsyncClient per event loop, or the user's own client (which the user then owns)."""

    name = "httpx"

    def __init__(self, *, client: Any = None, compress_gzip: bool = False) -> None:
        super().__init__(compress_gzip=compress_gzip)
        import httpx

        self._httpx = httpx
        self._user_client = client
        self._clients: LoopLocal[Any] = LoopLocal(
            functools.partial(_new_httpx_client, httpx), aclose=_close_httpx_client
        )
        weakref.finalize(self, LoopLocal.release_all, self._clients)

    async def request(  # noqa: D102
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str],
        timeout_s: float,
    ) -> HttpReply:
        httpx = self._httpx
        client = self._user_client or await self._clients.aget()
        try:
            # httpx timeouts are per phase; wait_for makes timeout_s a total, like aiohttp's.
            resp = await asyncio.wait_for(
                client.request(method, url, content=body, headers=headers, follow_redirects=False),
                timeout_s,
            )
            return HttpReply(resp.status_code, resp.headers, resp.content)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            error: Exception = self._timeout(url, timeout_s)
        except httpx.ConnectError as exc:
            error = self._cannot_connect(url, _first_line(exc) or "connection refused")
        except httpx.HTTPError as exc:
            error = self._dropped(url, f"{type(exc).__name__}: {_first_line(exc)}")
        raise error  # outside the except block, for the same reason as aiohttp's

    async def aclose(self) -> None:  # noqa: D102
        client = self._clients.pop_current()
        if client is not None:
            await client.aclose()


def _new_httpx_client(httpx: Any) -> Any:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    return httpx.AsyncClient(limits=limits, follow_redirects=False, timeout=None)


async def _close_httpx_client(client: Any) -> None:
    await client.aclose()


def _os_reason(os_error: OSError | None) -> str:
    """"Connection refused" rather than asyncio's "Connect call failed ('127.0.0.1', 9)"."""
    if os_error is not None and os_error.errno:
        return os.strerror(os_error.errno)
    return _first_line(os_error) if os_error is not None else "connection failed"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""

