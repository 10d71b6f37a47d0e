"""Tests for minima_nb.testing: the OpenAI-compatible mock server, over a real socket."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request

import aiohttp
import pytest

from minima_nb.testing import MockServer, count_tokens, mock_answer, openai_duration

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never use a proxy
_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s)$|^\d+ms$")


def _post(url: str, payload: dict, *, headers: dict | None = None, data: bytes | None = None,
          timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """POST JSON with urllib; return (status, headers, body) for 2xx and error statuses alike."""
    body = data if data is not None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def _chat(server: MockServer, prompt: str, headers: dict | None = None,
          **params) -> tuple[int, dict[str, str], bytes]:
    payload = {"model": "mock-model", "messages": [{"role": "user", "content": prompt}], **params}
    return _post(server.base_url + "/chat/completions", payload, headers=headers)


def _content(body: bytes) -> str | None:
    return json.loads(body)["choices"][0]["message"]["content"]


@pytest.fixture
def server():
    with MockServer(timeout_delay_s=60.0) as running:
        yield running


def test_answer_is_openai_shaped_with_usage(server):
    """A chat request gets an OpenAI chat.completion with the known answer and word counts."""
    status, _, body = _chat(server, "What is 2+2?")
    data = json.loads(body)
    assert status == 200
    assert data["object"] == "chat.completion" and data["model"] == "mock-model"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "4"}
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}


def test_unknown_prompt_is_echoed_with_model():
    """Unknown prompts get a deterministic echo naming the model."""
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi you"}]
    assert mock_answer(messages, "m1") == "[m1] echo: hi you"
    assert mock_answer([{"role": "user", "content": "Capital of France?"}], "m1") == "Paris"


def test_count_tokens_counts_words():
    """count_tokens counts whitespace-separated words, 0 only for empty text."""
    assert (count_tokens(""), count_tokens("   "), count_tokens("a b  c")) == (0, 1, 3)


def test_max_tokens_truncates_with_length_finish(server):
    """An answer longer than max_tokens is cut to that many words with finish_reason length."""
    _, _, body = _chat(server, "one two three four", max_tokens=2)
    data = json.loads(body)
    assert data["choices"][0]["message"]["content"] == "[mock-model] echo:"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 2


def test_seed_changes_the_answer(server):
    """A request with a seed gets an answer that mentions temperature and seed."""
    _, _, plain = _chat(server, "Capital of France?")
    _, _, seeded = _chat(server, "Capital of France?", temperature=0.7, seed=3)
    assert _content(plain) == "Paris"
    assert _content(seeded) == "Paris (t=0.7, seed=3)"


def test_route_without_v1_prefix(server):
    """POST /chat/completions without the /v1 prefix is served too."""
    url = server.base_url.removesuffix("/v1") + "/chat/completions"
    status, _, body = _post(url, {"messages": [{"role": "user", "content": "What is 2+2?"}]})
    assert status == 200 and _content(body) == "4"


def test_gzip_request_body_is_accepted(server):
    """A gzip-encoded request body is decompressed and answered."""
    raw = json.dumps({"messages": [{"role": "user", "content": "What is 2+2?"}]}).encode()
    status, _, body = _post(server.base_url + "/chat/completions", {},
                            data=gzip.compress(raw), headers={"Content-Encoding": "gzip"})
    assert status == 200 and _content(body) == "4"


def test_models_lists_mock_model(server):
    """GET /v1/models returns an OpenAI model list containing mock-model."""
    with _OPENER.open(server.base_url + "/models", timeout=10) as response:
        data = json.loads(response.read())
    assert data["object"] == "list"
    assert {"id": "mock-model", "object": "model"}.items() <= data["data"][0].items()


def test_scripted_429_has_retry_after_and_ratelimit_headers(server):
    """The "429" fault sends Retry-After: 1, rate-limit headers and an OpenAI error body."""
    server.script("p", ["429"])
    status, headers, body = _chat(server, "p")
    assert status == 429 and headers["Retry-After"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1s"
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"


def test_429_without_retry_after(server):
    """The "429-no-retry-after" fault is a 429 with no Retry-After header."""
    server.script("p", ["429-no-retry-after"])
    status, headers, _ = _chat(server, "p")
    assert status == 429 and "Retry-After" not in headers


def test_quota_fault_says_insufficient_quota(server):
    """The "quota" fault is a 429 whose error type and code are insufficient_quota."""
    server.script("p", ["quota"])
    status, _, body = _chat(server, "p")
    error = json.loads(body)["error"]
    assert status == 429 and error["code"] == error["type"] == "insufficient_quota"


@pytest.mark.parametrize("kind", ["400", "401", "403", "404", "408", "413", "422",
                                  "500", "502", "503", "504"])
def test_status_faults_send_openai_error_bodies(server, kind):
    """Each status fault answers with that status and an OpenAI-style error body."""
    server.script("p", [kind])
    status, _, body = _chat(server, "p")
    assert status == int(kind)
    assert json.loads(body)["error"]["message"]


def test_malformed_fault_body_is_not_json(server):
    """The "malformed" fault is a 200 whose body does not parse as JSON."""
    server.script("p", ["malformed"])
    status, _, body = _chat(server, "p")
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(body)


def test_null_fault_has_null_content(server):
    """The "null" fault is a 200 whose message content is null."""
    server.script("p", ["null"])
    status, _, body = _chat(server, "p")
    assert status == 200 and _content(body) is None


def test_empty_fault_has_no_choices(server):
    """The "empty" fault is a 200 with an empty choices list."""
    server.script("p", ["empty"])
    _, _, body = _chat(server, "p")
    assert json.loads(body)["choices"] == []


async def _aiohttp_chat(server: MockServer, prompt: str, timeout_s: float = 10.0) -> str:
    payload = {"model": "mock-model", "messages": [{"role": "user", "content": prompt}]}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(server.base_url + "/chat/completions", json=payload) as resp:
            return (await resp.json())["choices"][0]["message"]["content"]


def test_drop_fault_is_a_connection_error(server):
    """The "drop" fault cuts the body short, so the client sees a connection error."""
    server.script("p", ["drop"])
    with pytest.raises(aiohttp.ClientPayloadError):
        asyncio.run(_aiohttp_chat(server, "p"))
    assert server.responses_by_status == {0: 1}


def test_timeout_fault_outlasts_client_timeout(server):
    """The "timeout" fault answers too late for a client with a 0.3 s timeout."""
    server.script("p", ["timeout"])
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(_aiohttp_chat(server, "p", timeout_s=0.3))


def test_script_runs_in_order_then_succeeds(server):
    """Scripted faults apply to the prompt's next attempts in order, then answers resume."""
    server.script("What is 2+2?", ["503", "429", "500"])
    statuses = [_chat(server, "What is 2+2?")[0] for _ in range(4)]
    assert statuses == [503, 429, 500, 200]
    assert _chat(server, "other")[0] == 200


def test_counters_track_attempts_and_statuses(server):
    """requests_for, requests_total and responses_by_status count what was received and sent."""
    server.script("a", ["500"])
    for prompt in ("a", "a", "b"):
        _chat(server, prompt)
    assert (server.requests_for("a"), server.requests_for("b"), server.requests_total) == (2, 1, 3)
    assert server.responses_by_status == {500: 1, 200: 2}
    server.reset_counts()
    assert (server.requests_total, server.requests_for("a"), server.responses_by_status) == (0, 0, {})


def test_last_request_headers_and_json(server):
    """The last chat request's headers and JSON body are kept for inspection."""
    _chat(server, "hello", temperature=0.2, headers={"Authorization": "Bearer sk-test"})
    assert server.last_request_headers["Authorization"] == "Bearer sk-test"
    assert server.last_request_json["temperature"] == 0.2


def test_required_api_key_rejects_others():
    """With require_api_key set, only 'Bearer <key>' requests are answered; others get 401."""
    with MockServer(require_api_key="sk-right") as server:
        assert _chat(server, "x", headers={"Authorization": "Bearer sk-wrong"})[0] == 401
        assert _chat(server, "x")[0] == 401
        assert _chat(server, "x", headers={"Authorization": "Bearer sk-right"})[0] == 200
        assert "sk-right" not in repr(server)


def _statuses_with_random_faults(seed: int) -> list[int]:
    kinds = ("500", "503", "429")
    with MockServer(fault_rate=0.5, fault_kinds=kinds, seed=seed) as server:
        return [_chat(server, f"q{i}")[0] for i in range(20)]


def test_seeded_random_faults_are_reproducible():
    """Two servers with the same seed inject the same fault sequence; another seed differs."""
    first = _statuses_with_random_faults(7)
    assert first == _statuses_with_random_faults(7)
    assert 200 in first and set(first) - {200}
    assert first != _statuses_with_random_faults(8)


def test_rpm_limit_rejects_past_the_limit():
    """With rate_limit=3, the 4th request within a minute gets 429 with Retry-After."""
    with MockServer(rate_limit=3) as server:
        results = [_chat(server, "x") for _ in range(5)]
    assert [status for status, _, _ in results] == [200, 200, 200, 429, 429]
    assert [h["x-ratelimit-remaining-requests"] for _, h, _ in results[:3]] == ["2", "1", "0"]
    assert int(results[3][1]["Retry-After"]) >= 1


def test_ratelimit_headers_on_success():
    """With a rate limit set, 2xx responses carry both x-ratelimit-* families."""
    with MockServer(rate_limit=100) as server:
        status, headers, _ = _chat(server, "x")
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == "100"
    assert headers["x-ratelimit-remaining-requests"] == "99"
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        assert _DURATION.match(headers[name]), headers[name]
    assert int(headers["x-ratelimit-remaining-tokens"]) <= int(headers["x-ratelimit-limit-tokens"])


def test_ratelimit_headers_can_be_switched_off():
    """ratelimit_headers=False leaves the headers out while still enforcing the limit."""
    with MockServer(rate_limit=1, ratelimit_headers=False) as server:
        first, second = _chat(server, "x"), _chat(server, "x")
    assert first[0] == 200 and "x-ratelimit-limit-requests" not in first[1]
    assert second[0] == 429 and "Retry-After" in second[1]


def test_set_rate_limit_changes_limit_at_runtime(server):
    """set_rate_limit switches enforcement on and off while the server runs."""
    assert _chat(server, "x")[0] == 200
    server.set_rate_limit(1)
    assert [_chat(server, "x")[0] for _ in range(2)] == [200, 429]
    server.set_rate_limit(None)
    assert _chat(server, "x")[0] == 200


def test_sliding_window_readmits_after_a_minute():
    """The window is sliding: Retry-After counts down from the oldest request, then it admits."""
    now = [1000.0]
    with MockServer(rate_limit=2, clock=lambda: now[0]) as server:
        _chat(server, "x")
        now[0] += 20
        _chat(server, "x")
        status, headers, _ = _chat(server, "x")
        assert (status, headers["Retry-After"]) == (429, "40")
        assert headers["x-ratelimit-reset-requests"] == "40s"
        now[0] += 40
        assert _chat(server, "x")[0] == 200


def test_openai_duration_format():
    """Durations are written the way OpenAI's reset headers write them."""
    cases = {0.02: "20ms", 1: "1s", 1.5: "1.5s", 90: "1m30s", 360: "6m0s", 3661: "1h1m1s"}
    assert {s: openai_duration(s) for s in cases} == cases


def test_unknown_fault_kind_is_rejected(server):
    """Scripting a fault kind that does not exist fails at once."""
    with pytest.raises(ValueError, match="unknown fault"):
        server.script("p", ["418"])


def test_port_in_use_raises_oserror(server):
    """Starting a second server on a taken port raises OSError."""
    with pytest.raises(OSError):
        MockServer(port=server.port).start()


def test_async_with_serves_on_the_current_loop():
    """`async with MockServer()` serves on the running loop and stops on exit."""
    async def scenario() -> tuple[str, str]:
        async with MockServer() as server:
            answer = await _aiohttp_chat(server, "Capital of France?")
            return answer, repr(server)

    answer, running_repr = asyncio.run(scenario())
    assert answer == "Paris" and "127.0.0.1" in running_repr


def test_stop_does_not_wait_for_pending_timeout(caplog):
    """stop() returns promptly, cleanly, while a "timeout" fault is still sleeping."""
    server = MockServer(timeout_delay_s=600.0).start()
    server.script("slow", ["timeout"])
    client_errors: list[BaseException] = []

    def client() -> None:
        try:
            _chat(server, "slow")
        except Exception as exc:  # the connection is cut when the server stops
            client_errors.append(exc)

    client_thread = threading.Thread(target=client, daemon=True)
    client_thread.start()
    for _ in range(500):  # wait (bounded) until the request is sleeping on the server
        if server.requests_for("slow"):
            break
        time.sleep(0.01)
    with caplog.at_level(logging.WARNING):
        stopper = threading.Thread(target=server.stop, daemon=True)
        stopper.start()
        stopper.join(timeout=30)  # far below the 600 s sleep; the real figure is ~0.2 s
        client_thread.join(timeout=30)
    assert not stopper.is_alive() and not client_thread.is_alive()
    assert client_errors
    assert not [r for r in caplog.records if r.name.startswith(("asyncio", "aiohttp"))]
