"""Transport contract: aiohttp and httpx behave alike against the mock server."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest
from aiohttp import web

from minima_nb.engine.transport import make_transport
from minima_nb.errors import ConnectError, RequestTimeout
from minima_nb.testing import MockServer

HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-contract"}
KINDS = ["aiohttp", "httpx"]


@pytest.fixture(scope="module")
def server():
    with MockServer(timeout_delay_s=5.0) as srv:
        yield srv


def _body(prompt: str) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}]}).encode()


def _post(kind, url, prompt, timeout_s=5.0, **kw):
    async def go():
        transport = make_transport(kind, **kw)
        try:
            return await transport.post_json(url, _body(prompt), HEADERS, timeout_s)
        finally:
            await transport.aclose()

    return asyncio.run(go())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", KINDS)
def test_success_returns_status_headers_body(server, kind):
    """A 200 comes back with its JSON body and case-insensitive headers."""
    reply = _post(kind, server.base_url + "/chat/completions", "hello contract")
    assert reply.status == 200
    assert json.loads(reply.body)["choices"][0]["message"]["content"]
    assert reply.headers.get("content-type", "").startswith("application/json")
    assert reply.headers.get("Content-Type") == reply.headers.get("content-type")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault,status", [("429", 429), ("500", 500), ("503", 503), ("401", 401),
                                          ("404", 404), ("422", 422), ("408", 408)])
def test_every_status_class_is_returned_not_raised(server, kind, fault, status):
    """Non-2xx statuses are replies for the retry layer to judge, not transport errors."""
    prompt = f"status {fault} {kind}"
    server.script(prompt, [fault])
    reply = _post(kind, server.base_url + "/chat/completions", prompt)
    assert reply.status == status
    if status == 429:
        assert reply.headers.get("retry-after") is not None


@pytest.mark.parametrize("kind", KINDS)
def test_timeout_is_request_timeout(server, kind):
    """An answer slower than the total timeout raises RequestTimeout."""
    prompt = f"slow {kind}"
    server.script(prompt, ["timeout"])
    with pytest.raises(RequestTimeout, match="within 0.3s"):
        _post(kind, server.base_url + "/chat/completions", prompt, timeout_s=0.3)


@pytest.mark.parametrize("kind", KINDS)
def test_dropped_connection_is_connect_error(server, kind):
    """A connection closed mid-body raises ConnectError, not a library exception."""
    prompt = f"drop {kind}"
    server.script(prompt, ["drop"])
    with pytest.raises(ConnectError, match="dropped"):
        _post(kind, server.base_url + "/chat/completions", prompt)


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_body_is_returned_as_bytes(server, kind):
    """A 200 with a non-JSON body comes back as-is; judging it is the wire layer's job."""
    prompt = f"garbled {kind}"
    server.script(prompt, ["malformed"])
    reply = _post(kind, server.base_url + "/chat/completions", prompt)
    assert reply.status == 200
    with pytest.raises(ValueError):
        json.loads(reply.body)


@pytest.mark.parametrize("kind", KINDS)
def test_refused_connection_says_cannot_connect(kind):
    """Nothing listening gives a clear 'cannot connect' ConnectError naming the URL."""
    url = f"http://127.0.0.1:{_free_port()}/v1/chat/completions"
    with pytest.raises(ConnectError, match="cannot connect to http://127.0.0.1"):
        _post(kind, url, "anyone there")


@pytest.mark.parametrize("kind", KINDS)
def test_gzip_request_bodies(server, kind):
    """With compress_gzip the body goes out gzip-encoded and the server still answers."""
    reply = _post(kind, server.base_url + "/chat/completions", "zipped prompt", compress_gzip=True)
    assert reply.status == 200
    assert server.last_request_headers.get("Content-Encoding") == "gzip"
    assert server.last_request_json["messages"][0]["content"] == "zipped prompt"


@pytest.mark.parametrize("kind", KINDS)
def test_one_transport_across_two_event_loops(server, kind):
    """The same transport works from two asyncio.run() calls in a row (a pool per loop)."""
    transport = make_transport(kind)
    url = server.base_url + "/chat/completions"

    async def once(prompt):
        return (await transport.post_json(url, _body(prompt), HEADERS, 5.0)).status

    assert asyncio.run(once("loop one")) == 200
    assert asyncio.run(once("loop two")) == 200

    async def close():
        await transport.aclose()

    asyncio.run(close())


async def _serve(routes):
    """Start a throwaway aiohttp.web app on 127.0.0.1; return (runner, port)."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


@pytest.mark.parametrize("kind", KINDS)
def test_keep_alive_reuses_connections(kind):
    """Twenty sequential requests on one loop travel over one kept-alive connection."""
    client_ports = set()

    async def go():
        async def answer(request):
            client_ports.add(request.transport.get_extra_info("peername")[1])
            return web.json_response({"ok": True})

        runner, port = await _serve({"/v1/chat/completions": answer})
        transport = make_transport(kind)
        try:
            for i in range(20):
                await transport.post_json(f"http://127.0.0.1:{port}/v1/chat/completions",
                                          _body(f"ka {i}"), HEADERS, 5.0)
        finally:
            await transport.aclose()
            await runner.cleanup()

    asyncio.run(go())
    assert len(client_ports) == 1


def test_user_httpx_client_is_used_and_left_open(server):
    """A user's httpx.AsyncClient selects httpx, is used, and is not closed by aclose()."""
    async def go():
        client = httpx.AsyncClient()
        transport = make_transport("aiohttp", client=client)
        reply = await transport.post_json(server.base_url + "/chat/completions", _body("own client"), HEADERS, 5.0)
        await transport.aclose()
        still_open = not client.is_closed
        await client.aclose()
        return transport.name, reply.status, still_open

    assert asyncio.run(go()) == ("httpx", 200, True)


@pytest.mark.parametrize("kind", KINDS)
def test_redirects_are_not_followed(kind):
    """A redirect is returned as-is, so the Authorization header never reaches another host."""
    seen = []

    async def go():
        async def redirect(request):
            raise web.HTTPTemporaryRedirect("http://127.0.0.2:9/elsewhere")

        async def elsewhere(request):
            seen.append(request.headers.get("Authorization"))
            return web.json_response({})

        runner, port = await _serve({"/v1/chat/completions": redirect, "/elsewhere": elsewhere})
        transport = make_transport(kind)
        try:
            return await transport.post_json(
                f"http://127.0.0.1:{port}/v1/chat/completions", _body("x"), HEADERS, 5.0)
        finally:
            await transport.aclose()
            await runner.cleanup()

    reply = asyncio.run(go())
    assert reply.status == 307 and seen == []
