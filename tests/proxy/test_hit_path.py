"""The proxy's cache-hit path: the stored body served as stored, single-flight kept, parses
remembered only where that changes nothing, and the serving loop (uvloop or asyncio's).

Real parts throughout: the mock upstream over a socket, the proxy's SQLite file read back with
sqlite3, raw HTTP and aiohttp clients on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import sqlite3
import time

import aiohttp
import pytest

from minima_nb import ConfigError, ProxyServer
from minima_nb.servers.proxy.hits import ParsedBodies
from minima_nb.testing import MockServer

from .conftest import UPSTREAM_KEY, upstream_config

CHAT = "/v1/chat/completions"


def body_of(prompt: str, **fields: object) -> bytes:
    return json.dumps({"model": "mock-model", "messages": [{"role": "user", "content": prompt}],
                       **fields}).encode()


def post(proxy: ProxyServer, body: bytes, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        conn.request("POST", CHAT, body=body, headers={"Content-Type": "application/json",
                                                       **(headers or {})})
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


def test_a_hit_is_the_stored_upstream_body_byte_for_byte(proxy, upstream, cache_dir):
    status, headers, miss = post(proxy, body_of("What is 2+2?"))
    assert status == 200 and headers["x-minima-cache"] == "miss"
    proxy.backend.cache.flush()
    with sqlite3.connect(cache_dir / "minima_llm.db") as db:
        (stored,) = db.execute("SELECT raw FROM responses").fetchone()
    status, headers, hit = post(proxy, body_of("What is 2+2?"))
    assert status == 200 and headers["x-minima-cache"] == "hit"
    assert headers["content-type"].startswith("application/json")
    assert hit == stored.encode("utf-8")
    # The upstream's id, model and usage, as the miss had them.
    assert json.loads(hit) == json.loads(miss)
    assert upstream.requests_total == 1


def test_identical_requests_in_flight_share_one_upstream_call_then_hit_the_cache(upstream, cache_dir):
    with MockServer(require_api_key=UPSTREAM_KEY, latency_s=0.5) as slow, \
            ProxyServer(upstream_config(slow, cache_dir), port=0) as proxy:
        body = body_of("one slow question")

        async def ask(session: aiohttp.ClientSession) -> tuple[int, str, dict]:
            async with session.post(proxy.base_url + "/chat/completions", data=body,
                                    headers={"Content-Type": "application/json"}) as reply:
                return reply.status, reply.headers["x-minima-cache"], await reply.json()

        async def burst() -> list[tuple[int, str, dict]]:
            async with aiohttp.ClientSession() as session:
                return await asyncio.wait_for(asyncio.gather(*(ask(session) for _ in range(6))), 30)

        answers = asyncio.run(burst())
        assert slow.requests_total == 1
        assert [status for status, _, _ in answers] == [200] * 6
        assert sorted(cache for _, cache, _ in answers) == ["hit"] * 5 + ["miss"]
        assert len({json.dumps(data, sort_keys=True) for _, _, data in answers}) == 1
        # Once landed, the same request is a hit from the cache, still without an upstream call.
        status, headers, again = post(proxy, body)
        assert (status, headers["x-minima-cache"]) == (200, "hit")
        assert json.loads(again) == answers[0][2]
        assert slow.requests_total == 1
        snapshot = proxy.metrics.snapshot()
        assert (snapshot["requests"], snapshot["hits"], snapshot["misses"]) == (7, 6, 1)


def test_the_same_bytes_with_cache_control_no_cache_still_refresh(proxy, upstream):
    body = body_of("Name a colour.")
    assert post(proxy, body)[1]["x-minima-cache"] == "miss"
    assert post(proxy, body)[1]["x-minima-cache"] == "hit"
    _, headers, fresh = post(proxy, body, {"Cache-Control": "no-cache"})
    assert headers["x-minima-cache"] == "miss"
    _, headers, after = post(proxy, body)
    assert headers["x-minima-cache"] == "hit" and json.loads(after) == json.loads(fresh)
    assert upstream.requests_for("Name a colour.") == 2


def test_a_refused_body_is_refused_every_time(proxy, upstream):
    body = body_of("x", n=3)
    for _ in range(2):
        status, _, data = post(proxy, body)
        assert status == 400 and "n=3" in json.loads(data)["error"]["message"]
    assert upstream.requests_total == 0


def test_streaming_hits_and_parameters_keep_their_own_keys(proxy, upstream):
    for fields in ({}, {"temperature": 0}, {"temperature": 0.0, "max_tokens": 5},
                   {"temperature": 1, "seed": 7}):
        assert post(proxy, body_of("same words", **fields))[1]["x-minima-cache"] == "miss"
    assert upstream.requests_total == 4
    # 0.0 is the temperature 0 of the second request (as in the notebook's keys), so: a hit.
    _, headers, events = post(proxy, body_of("same words", temperature=0.0, stream=True))
    assert headers["x-minima-cache"] == "hit" and headers["content-type"].startswith("text/event-stream")
    chunks = [json.loads(line[6:]) for line in events.decode().split("\n\n")
              if line.startswith("data: {")]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events.endswith(b"data: [DONE]\n\n")
    assert upstream.requests_total == 4


def test_remembered_parses_are_bounded_in_bytes():
    memo = ParsedBodies(max_bytes=100, max_body_bytes=40)
    memo.remember(b"a" * 40, ("call a", "key a"))  # type: ignore[arg-type]
    memo.remember(b"b" * 41, ("call b", "key b"))  # type: ignore[arg-type]  # too large to keep
    assert memo.get(b"a" * 40) == ("call a", "key a") and memo.get(b"b" * 41) is None
    for letter in "cde":
        memo.remember(letter.encode() * 40)
    assert len(memo) == 2 and memo.get(b"a" * 40) is None  # the oldest went first
    assert memo.seen(b"e" * 40) and memo.get(b"e" * 40) is None  # bytes only, until it comes again
    memo.remember(b"e" * 40, ("call e", None))  # type: ignore[arg-type]
    assert len(memo) == 2 and memo.get(b"e" * 40) == ("call e", None)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop", "auto"])
def test_the_serving_loop_can_be_chosen(upstream, cache_dir, loop):
    with ProxyServer(upstream_config(upstream, cache_dir), port=0, event_loop=loop) as proxy:
        assert proxy.event_loop == ("asyncio" if loop == "asyncio" else "uvloop")
        assert post(proxy, body_of("loop?"))[0] == 200
        assert post(proxy, body_of("loop?"))[1]["x-minima-cache"] == "hit"


def test_an_unknown_loop_is_a_clear_error(upstream, cache_dir):
    with pytest.raises(ConfigError, match="event_loop='trio' is not one of auto, asyncio, uvloop"):
        ProxyServer(upstream_config(upstream, cache_dir), event_loop="trio")


def test_a_restarted_proxy_serves_the_warm_cache(upstream, cache_dir):
    config = upstream_config(upstream, cache_dir)
    body = body_of("Asked before the restart")
    with ProxyServer(config, port=0) as first:
        _, _, original = post(first, body)
    with ProxyServer(config, port=0) as second:
        # New to this proxy: answered by the backend's own lookup, then by the hit path.
        answers = [post(second, body) for _ in range(3)]
    assert [(status, headers["x-minima-cache"]) for status, headers, _ in answers] == [(200, "hit")] * 3
    assert {json.dumps(json.loads(data), sort_keys=True) for _, _, data in answers} == {
        json.dumps(json.loads(original), sort_keys=True)}
    assert answers[1][2] == answers[2][2]  # the stored body, byte for byte
    assert upstream.requests_total == 1


def test_a_client_hanging_up_mid_miss_neither_cancels_the_shared_call_nor_loses_its_answer(upstream, cache_dir):
    """The first asker's handler makes the upstream call; its client hangs up while it is on
    its way. The identical request waiting on it still gets the answer, and the answer is cached."""
    import socket
    import threading

    with MockServer(require_api_key=UPSTREAM_KEY, latency_s=0.6) as slow, \
            ProxyServer(upstream_config(slow, cache_dir), port=0) as proxy:
        body = body_of("asked, then abandoned")
        first = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        first.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
                      + b"\r\n\r\n" + body)
        deadline = time.monotonic() + 10
        while slow.requests_total == 0 and time.monotonic() < deadline:  # the call is upstream
            time.sleep(0.01)
        assert slow.requests_total == 1
        second: list[tuple[int, dict[str, str], bytes]] = []
        waiter = threading.Thread(target=lambda: second.append(post(proxy, body)))
        waiter.start()
        time.sleep(0.1)  # the second request is waiting on the first one's call
        first.close()  # the first client hangs up before the upstream answers
        waiter.join(timeout=20)
        status, headers, answer = second[0]
        assert (status, headers["x-minima-cache"]) == (200, "hit")
        assert json.loads(answer)["choices"][0]["message"]["content"]
        proxy.backend.cache.flush()
        with sqlite3.connect(cache_dir / "minima_llm.db") as db:
            assert db.execute("SELECT COUNT(*) FROM responses").fetchone() == (1,)
        assert post(proxy, body)[1]["x-minima-cache"] == "hit"
        assert slow.requests_total == 1


def test_an_abandoned_miss_alone_still_lands_in_the_cache(upstream, cache_dir):
    import socket

    with MockServer(require_api_key=UPSTREAM_KEY, latency_s=0.4) as slow, \
            ProxyServer(upstream_config(slow, cache_dir), port=0) as proxy:
        body = body_of("nobody waits for this one")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
            client.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: application/json\r\nContent-Length: "
                           + str(len(body)).encode() + b"\r\n\r\n" + body)
            deadline = time.monotonic() + 10
            while slow.requests_total == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
        deadline = time.monotonic() + 10  # hung up; the answer is still on its way
        while proxy.metrics.snapshot()["misses"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert post(proxy, body)[1]["x-minima-cache"] == "hit"
        assert slow.requests_total == 1
