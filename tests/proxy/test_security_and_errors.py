"""The proxy's refusals and failures over raw HTTP, its token, and the key scan.

Raw ``http.client`` requests on one keep-alive connection show that every refusal is a clear,
OpenAI-shaped 4xx and that neither the connection nor the server ends with it. The key scan
collects everything a client can see (status lines, headers, bodies, SSE events, error messages,
the proxy's repr) across every path, with an upstream that quotes the Authorization header it
received in its error bodies, and looks for the upstream key in it.
"""

from __future__ import annotations

import http.client
import json

import openai
import pytest

from minima_nb import ConfigError, ProxyServer
from minima_nb.testing import MockServer

from .conftest import UPSTREAM_KEY, upstream_config

CHAT = "/v1/chat/completions"


class Raw:
    """One keep-alive HTTP/1.1 connection to the proxy; records everything it receives."""

    def __init__(self, proxy: ProxyServer) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        self.seen: list[str] = []

    def send(self, method: str, path: str, body: bytes | str | dict | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        if isinstance(body, dict):
            body = json.dumps(body)
        self.conn.request(method, path, body=body, headers=headers or {})
        reply = self.conn.getresponse()
        data = reply.read()
        found = {k.lower(): v for k, v in reply.getheaders()}
        self.seen.append(f"{reply.status} {reply.reason} {found!r} {data!r}")
        return reply.status, found, data

    def chat(self, prompt: str = "hello", **fields: object) -> tuple[int, dict[str, str], bytes]:
        body = {"model": "mock-model", "messages": [{"role": "user", "content": prompt}], **fields}
        return self.send("POST", CHAT, body, {"Content-Type": "application/json"})

    def close(self) -> None:
        self.conn.close()


def error_of(data: bytes) -> dict:
    error = json.loads(data)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.fixture
def raw(proxy):
    connection = Raw(proxy)
    yield connection
    connection.close()


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({"model": "mock-model"}, 400, "missing 'messages'"),
    ({"model": "mock-model", "messages": []}, 400, "non-empty list"),
    ({"model": "mock-model", "messages": ["hi"]}, 400, "messages[0]"),
    ({"model": "mock-model", "messages": [{"role": "user", "content": "x"}], "n": 3}, 400, "n=3"),
    ({"model": "", "messages": [{"role": "user", "content": "x"}]}, 400, "model"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}, 400, "positive integer"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5,
      "max_completion_tokens": 6}, 400, "one setting"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400, "stream"),
])
def test_bad_requests_are_clear_4xx_and_the_server_carries_on(raw, upstream, body, status, words):
    got, headers, data = raw.send("POST", CHAT, body)
    assert got == status
    assert words in error_of(data)["message"]
    assert headers["x-should-retry"] == "false"
    assert raw.chat()[0] == 200  # same connection, same server
    assert upstream.requests_total == 1


def test_unknown_routes_and_methods(raw):
    status, headers, data = raw.send("GET", "/v1/embeddings")
    assert status == 404 and "POST /v1/chat/completions" in error_of(data)["message"]
    status, headers, data = raw.send("GET", CHAT)
    assert status == 405 and headers["allow"] == "POST"
    assert raw.send("GET", "/health")[0] == 200
    assert json.loads(raw.send("GET", "/v1/models")[2])["data"][0]["id"] == "mock-model"
    assert raw.chat()[0] == 200


def test_bodies_over_the_limit_get_413(upstream, cache_dir):
    config = upstream_config(upstream, cache_dir)
    with ProxyServer(config, port=0, max_body_bytes=2_000) as proxy:
        raw = Raw(proxy)
        big = "x" * 5_000
        status, headers, data = raw.chat(big)
        assert status == 413 and "2,000 bytes" in error_of(data)["message"]
        raw.close()
        # Without a Content-Length (chunked), the limit holds as well.
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        body = json.dumps({"messages": [{"role": "user", "content": big}]}).encode()
        conn.request("POST", CHAT, body=iter([body[:1000], body[1000:]]),
                     headers={"Transfer-Encoding": "chunked"}, encode_chunked=True)
        reply = conn.getresponse()
        assert reply.status == 413 and json.loads(reply.read())["error"]["code"] == "request_too_large"
        conn.close()
        assert Raw(proxy).chat("small")[0] == 200
    assert upstream.requests_total == 1


def test_upstream_errors_keep_their_status_and_say_whether_to_retry(proxy, upstream, raw):
    upstream.script("bad", ["400"])
    status, headers, data = raw.chat("bad")
    assert status == 400 and headers["x-should-retry"] == "false"
    assert "upstream" in error_of(data)["message"]
    # openai-python honours x-should-retry: one upstream request despite its max_retries=2.
    upstream.script("bad again", ["422"])
    client = openai.OpenAI(base_url=proxy.base_url, api_key="x")
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="mock-model",
                                       messages=[{"role": "user", "content": "bad again"}])
    assert upstream.requests_for("bad again") == 1


def test_retryable_upstream_trouble_is_retried_by_the_proxy_not_the_client(upstream, cache_dir):
    config = upstream_config(upstream, cache_dir, max_attempts=3, base_backoff_s=0.0,
                             max_backoff_s=0.0)
    with ProxyServer(config, port=0) as proxy:
        raw = Raw(proxy)
        upstream.script("flaky", ["500", "503"])
        assert raw.chat("flaky")[0] == 200
        upstream.script("down", ["502", "502", "502"])
        status, headers, data = raw.chat("down")
        assert status == 502 and "x-should-retry" not in headers
        assert "3 attempt(s)" in error_of(data)["message"]
        upstream.script("dropped", ["drop", "drop", "drop"])
        status, headers, data = raw.chat("dropped")
        assert status == 502 and error_of(data)["code"] == "ConnectError"
        raw.close()
        assert proxy.metrics.errors == 2


def test_a_token_is_required_when_set(upstream, cache_dir):
    config = upstream_config(upstream, cache_dir)
    with ProxyServer(config, port=0, token="tok-123") as proxy:
        raw = Raw(proxy)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "tok-123"}):
            status, got, data = raw.send("POST", CHAT, {"messages": [{"role": "user", "content": "q"}]},
                                         headers)
            assert status == 401 and got["x-should-retry"] == "false"
            assert "Bearer <token>" in error_of(data)["message"]
        assert raw.send("GET", "/metrics")[0] == 401
        assert raw.send("GET", "/v1/models")[0] == 401
        assert raw.send("GET", "/health")[0] == 200
        assert raw.send("GET", "/metrics", headers={"Authorization": "Bearer tok-123"})[0] == 200
        raw.close()
        client = openai.OpenAI(base_url=proxy.base_url, api_key="tok-123", max_retries=0)
        assert client.chat.completions.create(model="mock-model",
                                              messages=[{"role": "user", "content": "q"}]).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=proxy.base_url, api_key="nope").models.list()
    assert upstream.requests_total == 1
    assert "tok-123" not in repr(proxy)


def test_the_token_comes_from_the_environment(upstream, cache_dir, monkeypatch):
    monkeypatch.setenv("MINIMA_PROXY_TOKEN", "from-env")
    with ProxyServer(upstream_config(upstream, cache_dir), port=0) as proxy:
        raw = Raw(proxy)
        assert raw.chat()[0] == 401
        assert raw.send("POST", CHAT, {"messages": [{"role": "user", "content": "q"}]},
                        {"Authorization": "Bearer from-env"})[0] == 200
        raw.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.10", "example.org"])
def test_listening_beyond_loopback_without_a_token_is_refused(upstream, cache_dir, host, monkeypatch):
    monkeypatch.delenv("MINIMA_PROXY_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="without a token.*MINIMA_PROXY_TOKEN"):
        ProxyServer(upstream_config(upstream, cache_dir), host=host)
    ProxyServer(upstream_config(upstream, cache_dir), host=host, token="t")  # allowed with one
    for loopback in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        ProxyServer(upstream_config(upstream, cache_dir), host=loopback)


def test_the_metrics_endpoint_counts(proxy, raw):
    raw.chat("one")
    raw.chat("one")
    raw.chat("two", stream=True)
    raw.send("POST", CHAT, b"nope")
    status, headers, data = raw.send("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    values = dict(line.split(" ") for line in data.decode().splitlines() if not line.startswith("#"))
    assert values["minima_proxy_requests_total"] == "4"
    assert values["minima_proxy_cache_hits_total"] == "1"
    assert values["minima_proxy_cache_misses_total"] == "2"
    assert values["minima_proxy_errors_total"] == "1"
    assert values["minima_proxy_upstream_requests_total"] == "2"
    assert values["minima_proxy_upstream_429_total"] == "0"
    assert values["minima_proxy_in_flight"] == "0"
    assert "4 requests (1 hits, 2 misses)" in proxy.metrics.line()


def test_the_upstream_key_never_reaches_a_client(tmp_path):
    """Every path a client can take, against an upstream that echoes credentials in errors."""
    wrong_key = "sk-proxytest-WRONGKEY-1b2c3d4e"
    with MockServer(require_api_key=UPSTREAM_KEY, echo_credentials=True) as upstream:
        good = upstream_config(upstream, tmp_path / "a", max_attempts=2, base_backoff_s=0.0,
                               max_backoff_s=0.0)
        bad = upstream_config(upstream, tmp_path / "b", api_key=wrong_key)
        seen: list[str] = []
        for config in (good, bad):
            with ProxyServer(config, port=0) as proxy:
                seen.append(repr(proxy))
                raw = Raw(proxy)
                for fault in ("400", "401", "404", "429", "500", "malformed", "null"):
                    upstream.script(f"fault {fault}", [fault, fault])
                    raw.chat(f"fault {fault}")
                raw.chat("fine")
                raw.chat("fine", stream=True, stream_options={"include_usage": True})
                raw.chat("fine")
                for path in ("/v1/models", "/metrics", "/health", "/nowhere"):
                    raw.send("GET", path)
                raw.send("POST", CHAT, b"{broken")
                raw.close()
                client = openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0)
                try:
                    client.chat.completions.create(model="mock-model",
                                                   messages=[{"role": "user", "content": "fault 400"}])
                except openai.APIError as exc:
                    seen.append(f"{exc!r} {exc}")
                seen += raw.seen
        everything = "\n".join(seen)
    assert "[mock-model] echo: fine" in everything  # the scan did see answers
    assert "Authorization" in everything or "redacted" in everything  # ...and echoed errors
    for key in (UPSTREAM_KEY, wrong_key):
        assert key not in everything
        assert key.split("-")[2] not in everything  # not even its distinctive part
