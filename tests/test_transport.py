"""Transport contract: http1, aiohttp and httpx behave alike against the mock server."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket

import httpx
import pytest
from aiohttp import web

from minima_nb.engine.transports import make_transport
from minima_nb.errors import ConnectError, RequestTimeout
from minima_nb.testing import MockServer

HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-contract"}
KINDS = ["http1", "aiohttp", "httpx"]


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


# -- answer framings, idle connections, cancellation, TLS: against raw servers -------------------


async def _raw_server(answer):
    """A bare asyncio HTTP/1.1 server; ``answer(n, writer)`` writes the reply to the n-th request
    of a connection (from 1) and returns False to close it without more. Returns (server, port,
    connections seen)."""
    connections = []

    async def handle(reader, writer):
        connections.append(writer)
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                n += 1
                if not await answer(n, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], connections


def _reply(status_line: bytes, headers: list[bytes], body: bytes = b"") -> bytes:
    return b"\r\n".join([status_line, *headers, b"", body])


def _against_raw(kind, answer, requests=1, between_s=0.0):
    """Send ``requests`` POSTs one after another through a ``kind`` transport; (replies, connections)."""
    async def go():
        server, port, connections = await _raw_server(answer)
        transport = make_transport(kind)
        replies = []
        try:
            for i in range(requests):
                replies.append(await transport.post_json(f"http://127.0.0.1:{port}/v1/chat/completions",
                                                         _body(f"raw {i}"), HEADERS, 5.0))
                await asyncio.sleep(between_s)
        finally:
            await transport.aclose()
            server.close()
        return replies, len(connections)

    return asyncio.run(go())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("framing", ["chunked", "gzip", "until-close"])
def test_answer_framings_are_read_whole(kind, framing):
    """A chunked body, a gzip-encoded one, and one that ends with the connection all arrive whole."""
    payload = json.dumps({"choices": [{"message": {"content": "x" * 3000}}]}).encode()

    async def answer(n, writer):
        if framing == "chunked":
            chunks = [payload[i:i + 700] for i in range(0, len(payload), 700)]
            body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
            writer.write(_reply(b"HTTP/1.1 200 OK", [b"Content-Type: application/json",
                                                     b"Transfer-Encoding: chunked"]) + body)
        elif framing == "gzip":
            packed = gzip.compress(payload)
            writer.write(_reply(b"HTTP/1.1 200 OK", [b"Content-Encoding: gzip",
                                                     b"Content-Length: %d" % len(packed)], packed))
        else:
            writer.write(_reply(b"HTTP/1.1 200 OK", [b"Connection: close"], payload))
        await writer.drain()
        return framing != "until-close"

    replies, _ = _against_raw(kind, answer, requests=2)
    assert [r.status for r in replies] == [200, 200]
    assert all(r.body == payload for r in replies)


@pytest.mark.parametrize("kind", KINDS)
def test_connection_closed_while_idle_is_replaced(kind):
    """A server that drops a kept-alive connection instead of answering its next request (an idle
    timeout racing the request): the request goes again on a new connection, and succeeds."""
    async def answer(n, writer):
        if n > 1:
            return False  # closes without a word: the request was never handled
        writer.write(_reply(b"HTTP/1.1 200 OK", [b"Content-Length: 2"], b"{}"))
        await writer.drain()
        return True

    if kind != "http1":  # aiohttp and httpx raise it: the retry layer above sends it again
        with pytest.raises(ConnectError):
            _against_raw(kind, answer, requests=3)
        return
    replies, connections = _against_raw(kind, answer, requests=3)
    assert [r.status for r in replies] == [200, 200, 200]
    assert connections == 3  # each later request found its connection dead and opened another


def test_http1_cancelled_request_leaves_no_half_read_connection():
    """A request cancelled while its answer is awaited: its connection is closed, not reused."""
    async def go():
        async def answer(n, writer):
            await asyncio.sleep(0.3)  # slower than the caller's patience
            writer.write(_reply(b"HTTP/1.1 200 OK", [b"Content-Length: 2"], b"{}"))
            await writer.drain()
            return True

        server, port, connections = await _raw_server(answer)
        transport = make_transport("http1")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(transport.post_json(url, _body("a"), HEADERS, 5.0), 0.05)
            reply = await transport.post_json(url, _body("b"), HEADERS, 5.0)
        finally:
            await transport.aclose()
            server.close()
        return reply.status, len(connections)

    assert asyncio.run(go()) == (200, 2)


def test_http1_header_with_a_line_break_is_refused_without_its_value():
    """A key pasted with a newline would split the request: refused, and the key is not shown."""
    from minima_nb.errors import ConfigError

    async def go():
        transport = make_transport("http1")
        try:
            await transport.post_json("http://127.0.0.1:9/v1/chat/completions", _body("x"),
                                      {"Authorization": "Bearer sk-secret\r\nX-Evil: 1"}, 1.0)
        finally:
            await transport.aclose()

    with pytest.raises(ConfigError, match="line break") as caught:
        asyncio.run(go())
    assert "sk-secret" not in str(caught.value)


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1 and its key, as files; (cert path, key path)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_http1_speaks_tls_and_checks_the_certificate(tmp_path, monkeypatch):
    """https:// goes over TLS checked against the system's CAs: a certificate they include
    (SSL_CERT_FILE) is served, one they do not is refused with the reason."""
    import ssl

    cert_file, key_file = _self_signed(tmp_path)

    async def go(trusted):
        async def answer(request):
            return web.json_response({"tls": request.secure})

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        port = runner.addresses[0][1]
        if trusted:
            monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
        else:
            monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        transport = make_transport("http1")
        try:
            return await transport.post_json(f"https://127.0.0.1:{port}/v1/chat/completions",
                                              _body("secret"), HEADERS, 5.0)
        finally:
            await transport.aclose()
            await runner.cleanup()

    reply = asyncio.run(go(trusted=True))
    assert reply.status == 200 and json.loads(reply.body) == {"tls": True}
    with pytest.raises(ConnectError, match="cannot connect to https://127.0.0.1.*certificate verify failed"):
        asyncio.run(go(trusted=False))
