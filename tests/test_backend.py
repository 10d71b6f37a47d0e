"""OpenAIMinimaLlm end to end against the embedded mock server: answers, retries, failures, cache, loops."""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import warnings

import pytest

from minima_nb import (
    MinimaLlmConfig,
    MinimaLlmFailure,
    MinimaLlmRequest,
    MinimaLlmResponse,
    OpenAIMinimaLlm,
)
from minima_nb.servers.mock.structured import BAD_JSON
from minima_nb.testing import FAULT_KINDS, MockServer

KEY = "sk-test-0123456789abcdef"
RETRIED_KINDS = ["408", "429", "429-no-retry-after", "500", "502", "503", "504", "timeout",
                 "drop", "malformed"]
FATAL_KINDS = [
    ("400", "ClientError", 400, "Invalid request"),
    ("401", "AuthError", 401, "Incorrect API key provided"),
    ("403", "AuthError", 403, "not allowed to use this model"),
    ("404", "ClientError", 404, "The model does not exist"),
    ("413", "ClientError", 413, "Request too large"),
    ("422", "ClientError", 422, "Unprocessable request"),
    ("quota", "AuthError", 429, "insufficient_quota"),
]


class FakeTime:
    """A clock that only moves when slept on, so pacing and backoff cost no real time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


@pytest.fixture
def srv():
    # A "timeout" fault holds its answer 5 s; stop() cuts it off after a short grace period.
    with MockServer(timeout_delay_s=5.0) as server:
        yield server


def make_config(base_url: str, **overrides) -> MinimaLlmConfig:
    settings = dict(base_url=base_url, model="mock-model", api_key=KEY, rpm=0,
                    base_backoff_s=0.01, max_backoff_s=0.05, timeout_s=1.0, cooldown_cap_s=0.1,
                    max_retry_after_s=0.05)
    settings.update(overrides)
    return MinimaLlmConfig(**settings)


def make_backend(base_url: str, fake: FakeTime | None = None, **overrides) -> OpenAIMinimaLlm:
    timing = {"clock": fake.clock, "sleep": fake.sleep} if fake is not None else {}
    return OpenAIMinimaLlm(make_config(base_url, **overrides), **timing)


def ask(prompt: str, request_id: str = "r1", **fields) -> MinimaLlmRequest:
    return MinimaLlmRequest(request_id=request_id, messages=[{"role": "user", "content": prompt}], **fields)


def generate(backend: OpenAIMinimaLlm, request: MinimaLlmRequest, **kwargs):
    """One generate call in its own ``asyncio.run``, closing that loop's HTTP pool afterwards."""

    async def go():
        try:
            return await backend.generate(request, **kwargs)
        finally:
            await backend.aclose()

    return asyncio.run(go())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- a successful call ---------------------------------------------------------------------------


def test_generate_returns_text_usage_and_metadata(srv):
    """A plain call returns the answer with token usage, finish reason, latency, one attempt and the model."""
    result = generate(make_backend(srv.base_url), ask("What is 2+2?"))
    assert isinstance(result, MinimaLlmResponse)
    assert result.request_id == "r1"
    assert result.text == "4"
    assert (result.input_tokens, result.output_tokens) == (3, 1)
    assert result.finish_reason == "stop"
    assert result.latency_s is not None and result.latency_s > 0
    assert result.attempts == 1
    assert result.model == "mock-model"
    assert result.cached is False


def test_authorization_header_carries_the_key(srv):
    """The API key is sent as a bearer token."""
    generate(make_backend(srv.base_url), ask("hello"))
    assert srv.last_request_headers["Authorization"] == f"Bearer {KEY}"


def test_repr_hides_the_key(srv):
    """repr(backend) names the endpoint and model but never the API key."""
    text = repr(make_backend(srv.base_url))
    assert "mock-model" in text
    assert KEY not in text and "sk-test" not in text


# -- retries ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", RETRIED_KINDS)
def test_transient_fault_is_retried_until_success(srv, kind):
    """A transient fault twice, then success: three attempts, three requests seen by the server."""
    srv.script("retry me", [kind, kind])
    backend = make_backend(srv.base_url, FakeTime(), timeout_s=0.3)
    result = generate(backend, ask("retry me"))
    assert isinstance(result, MinimaLlmResponse), result
    assert result.text == "[mock-model] echo: retry me"
    assert result.attempts == 3
    assert srv.requests_for("retry me") == 3


@pytest.mark.parametrize("kind", ["500", "503"])
def test_each_retry_waits_once(srv, kind):
    """A retry waits one backoff: an overload's shared cooldown is not slept a second time on top."""
    srv.script("wait for me", [kind, kind])
    fake = FakeTime()
    result = generate(make_backend(srv.base_url, fake), ask("wait for me"))
    assert result.attempts == 3
    assert len(fake.slept) == 2
    assert all(0 < s <= 0.1 for s in fake.slept)  # within max_backoff_s and cooldown_cap_s


def test_exhausted_attempts_return_a_failure(srv):
    """When every attempt fails, the failure reports max_attempts attempts and the last status."""
    srv.script("always down", ["500"] * 3)
    result = generate(make_backend(srv.base_url, FakeTime(), max_attempts=3), ask("always down"))
    assert isinstance(result, MinimaLlmFailure)
    assert (result.error_type, result.status, result.attempts) == ("ServerError", 500, 3)
    assert result.retryable is True
    assert srv.requests_for("always down") == 3


# -- failures that are not retried ----------------------------------------------------------------


@pytest.mark.parametrize(("kind", "error_type", "status", "server_says"), FATAL_KINDS)
def test_fatal_status_fails_at_once(srv, kind, error_type, status, server_says):
    """Request and credential errors fail after one request, with the status and the server's message."""
    srv.script("doomed", [kind])
    result = generate(make_backend(srv.base_url, FakeTime()), ask("doomed"))
    assert isinstance(result, MinimaLlmFailure)
    assert (result.error_type, result.status, result.attempts) == (error_type, status, 1)
    assert result.retryable is False
    assert f"HTTP {status}" in result.message and server_says in result.message
    assert srv.requests_for("doomed") == 1


def test_auth_failure_names_the_variable_not_the_key(srv):
    """A 401 says to check OPENAI_API_KEY and does not repeat the key."""
    srv.script("who am i", ["401"])
    result = generate(make_backend(srv.base_url), ask("who am i"))
    assert "OPENAI_API_KEY" in result.message
    assert KEY not in result.message and KEY not in repr(result)


def test_null_content_is_a_response_error_and_not_cached(srv, tmp_path):
    """content: null on every attempt is a ResponseError failure; nothing is cached for it."""
    srv.script("say nothing", ["null", "null"])
    backend = make_backend(srv.base_url, FakeTime(), max_attempts=2, cache_dir=tmp_path)
    failed = generate(backend, ask("say nothing"))
    assert isinstance(failed, MinimaLlmFailure)
    assert (failed.error_type, failed.attempts) == ("ResponseError", 2)
    assert not hasattr(failed, "text")
    assert backend.cache.count() == 0
    answered = generate(backend, ask("say nothing"))
    assert isinstance(answered, MinimaLlmResponse)
    assert answered.text == "[mock-model] echo: say nothing"
    assert (answered.cached, answered.attempts) == (False, 1)
    backend.close()


def test_connection_refused_is_a_connect_error(tmp_path):
    """Nothing listening at base_url: a ConnectError failure saying it cannot connect."""
    backend = make_backend(f"http://127.0.0.1:{free_port()}/v1", FakeTime(), max_attempts=2)
    result = generate(backend, ask("anyone there?"))
    assert isinstance(result, MinimaLlmFailure)
    assert (result.error_type, result.attempts) == ("ConnectError", 2)
    assert "cannot connect" in result.message


@pytest.mark.parametrize(
    "messages",
    ["What is 2+2?", [{"content": "no role"}], []],
    ids=["string", "dict-without-role", "empty"],
)
def test_malformed_messages_raise_naming_the_request(srv, messages):
    """A message list that is not one is a programming error: it raises, naming the request id."""
    backend = make_backend(srv.base_url)
    request = MinimaLlmRequest(request_id="bad-row-7", messages=messages)
    with pytest.raises((TypeError, ValueError), match="bad-row-7"):
        generate(backend, request)
    assert srv.requests_total == 0


def test_generate_never_raises_for_call_errors(srv):
    """Every fault kind the mock can inject comes back as a failure value, never an exception."""
    backend = make_backend(srv.base_url, FakeTime(), max_attempts=1, timeout_s=0.3)
    kinds = sorted(FAULT_KINDS - set(BAD_JSON))  # unusable JSON is a failure only under a schema
    for kind in kinds:
        srv.script(f"fault {kind}", [kind])

    async def every_kind():
        try:
            return [await backend.generate(ask(f"fault {kind}", kind)) for kind in kinds]
        finally:
            await backend.aclose()

    results = asyncio.run(every_kind())
    for kind, result in zip(kinds, results, strict=True):
        assert isinstance(result, MinimaLlmFailure), (kind, result)
        assert (result.request_id, result.attempts) == (kind, 1)
    assert srv.requests_total == len(kinds)


# -- caching ----------------------------------------------------------------------------------------


def test_keys_made_from_kept_parts_are_the_keys_made_from_scratch(srv, tmp_path):
    """Requests sharing their fields reuse one key function; the keys stay cache_key's: 1 and
    1.0 are one temperature, True another, and extra or a namespace change the key."""
    import sqlite3

    from minima_nb.cache import cache_key

    backend = make_backend(srv.base_url, cache_dir=tmp_path, cache_namespace="ns")
    asked = [ask("same", temperature=1), ask("same", temperature=1.0), ask("same", temperature=True),
             ask("other", temperature=1), ask("same", temperature=1, extra={"seed": 3}),
             ask("same", temperature=1, max_tokens=5)]
    cached = [generate(backend, request).cached for request in asked]
    assert cached == [False, True, False, False, False, False]
    backend.cache.flush()
    with sqlite3.connect(tmp_path / "minima_llm.db") as db:
        stored = {key for (key,) in db.execute("SELECT key FROM responses")}
    expected = {cache_key("mock-model", r.messages, r.temperature, r.max_tokens, r.extra, "ns")[0]
                for r in asked}
    assert stored == expected and len(stored) == 5
    backend.close()


def test_second_call_is_served_from_the_cache(srv, tmp_path):
    """The same request again is a cache hit: cached=True, no attempt, no new server request."""
    backend = make_backend(srv.base_url, cache_dir=tmp_path)
    first = generate(backend, ask("remember me"))
    second = generate(backend, ask("remember me"))
    assert (first.cached, second.cached) == (False, True)
    assert second.attempts == 0
    assert second.text == first.text
    assert srv.requests_for("remember me") == 1
    backend.close()


def test_back_to_back_repeat_in_one_loop_is_a_cache_hit(srv, tmp_path):
    """A repeat right after the first answer, in the same loop, is already a cache hit."""
    backend = make_backend(srv.base_url, cache_dir=tmp_path)

    async def twice():
        try:
            return await backend.generate(ask("again")), await backend.generate(ask("again"))
        finally:
            await backend.aclose()

    _, second = asyncio.run(twice())
    backend.close()
    assert second.cached is True
    assert srv.requests_for("again") == 1


def test_force_refresh_skips_the_read_and_writes_the_new_answer(srv, tmp_path):
    """force_refresh=True asks the server again with a seed and a raised temperature, and caches that."""
    backend = make_backend(srv.base_url, cache_dir=tmp_path)
    generate(backend, ask("refresh me"))
    refreshed = generate(backend, ask("refresh me"), force_refresh=True)
    sent = srv.last_request_json
    assert refreshed.cached is False and srv.requests_for("refresh me") == 2
    assert isinstance(sent.get("seed"), int)
    assert sent["temperature"] > 0
    again = generate(backend, ask("refresh me"))
    assert again.cached is True and again.text == refreshed.text
    backend.close()


def test_force_refresh_keeps_the_callers_temperature(srv, tmp_path):
    """A temperature the caller chose is sent unchanged on a forced refresh."""
    backend = make_backend(srv.base_url, cache_dir=tmp_path)
    generate(backend, ask("warm", temperature=0.9), force_refresh=True)
    assert srv.last_request_json["temperature"] == 0.9
    assert "seed" in srv.last_request_json
    backend.close()


def test_config_force_refresh_asks_every_time_but_still_writes(srv, tmp_path):
    """force_refresh in the config: every call goes to the server, and the answers land in the cache."""
    refresher = make_backend(srv.base_url, cache_dir=tmp_path, force_refresh=True)
    first = generate(refresher, ask("always fresh"))
    second = generate(refresher, ask("always fresh"))
    assert (first.cached, second.cached) == (False, False)
    assert srv.requests_for("always fresh") == 2
    assert srv.last_request_json["temperature"] > 0 and "seed" in srv.last_request_json
    refresher.close()
    reader = make_backend(srv.base_url, cache_dir=tmp_path)
    hit = generate(reader, ask("always fresh"))
    assert hit.cached is True and hit.text == second.text
    reader.close()


# -- endpoints and transports ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["/v1", "/v1/", "", "/"])
def test_base_url_with_or_without_v1(srv, suffix):
    """base_url works whether or not it ends in /v1 (or a slash)."""
    root = srv.base_url.removesuffix("/v1")
    result = generate(make_backend(root + suffix), ask("What is 2+2?"))
    assert isinstance(result, MinimaLlmResponse) and result.text == "4"


def test_gzip_request_bodies_work(srv):
    """compress_gzip=True sends a gzip body that the server reads."""
    result = generate(make_backend(srv.base_url, compress_gzip=True), ask("Capital of France?"))
    assert result.text == "Paris"
    assert srv.last_request_headers.get("Content-Encoding") == "gzip"


def test_httpx_transport_answers(srv):
    """transport="httpx" gives the same answer."""
    backend = make_backend(srv.base_url, transport="httpx")
    result = generate(backend, ask("What is 2+2?"))
    assert result.text == "4" and result.attempts == 1
    assert "httpx" in repr(backend)


def test_httpx_transport_retries(srv):
    """transport="httpx" retries a 503 and a dropped connection like aiohttp does."""
    srv.script("flaky", ["503", "drop"])
    result = generate(make_backend(srv.base_url, FakeTime(), transport="httpx"), ask("flaky"))
    assert isinstance(result, MinimaLlmResponse) and result.attempts == 3
    assert srv.requests_for("flaky") == 3


# -- event loops -------------------------------------------------------------------------------------


def _use_from_several_loops(backend: OpenAIMinimaLlm, close: str) -> list:
    """Two asyncio.run calls then one in another thread; ``close`` says when to call aclose()."""

    async def once(prompt: str, last: bool):
        try:
            return await backend.generate(ask(prompt))
        finally:
            if close == "each" or (close == "last" and last):
                await backend.aclose()

    results = [asyncio.run(once("loop one", False)), asyncio.run(once("loop two", False))]
    thread = threading.Thread(target=lambda: results.append(asyncio.run(once("loop three", True))))
    thread.start()
    thread.join(timeout=10)
    return results


def _unclosed_session_reports(caught: list, caplog) -> list[str]:
    warned = [str(w.message) for w in caught if "Unclosed" in str(w.message)]
    logged = [r.getMessage() for r in caplog.records if "Unclosed" in r.getMessage()]
    return warned + logged


@pytest.mark.parametrize("close", ["each", "last"])
def test_backend_is_reusable_across_event_loops(srv, caplog, close):
    """Two asyncio.run calls and a second thread's loop share one backend; no unclosed session warns."""
    backend = make_backend(srv.base_url)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = _use_from_several_loops(backend, close)
        del backend
        gc.collect()
    assert [r.text for r in results] == [f"[mock-model] echo: loop {n}" for n in ("one", "two", "three")]
    assert _unclosed_session_reports(caught, caplog) == []


def test_backend_never_closed_leaves_no_unclosed_session(srv, caplog):
    """A backend dropped without aclose() after its loops ended does not warn about its sessions."""
    backend = make_backend(srv.base_url)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _use_from_several_loops(backend, "never")
        del backend
        gc.collect()
    assert _unclosed_session_reports(caught, caplog) == []


# -- pacing -----------------------------------------------------------------------------------------


def test_pacing_learns_the_servers_limit_from_headers(srv):
    """x-ratelimit-* headers on a 2xx lower the pacer to the server's requests per minute."""
    srv.set_rate_limit(30)
    backend = make_backend(srv.base_url)
    assert backend.pacer.effective_rpm is None
    generate(backend, ask("pace me"))
    assert backend.pacer.effective_rpm is not None and backend.pacer.effective_rpm <= 30


def test_rate_limit_storm_ends_with_bounded_attempts(srv):
    """20 concurrent calls against a 5-rpm server: 5 answers, the rest RateLimited within max_attempts."""
    srv.set_rate_limit(5)
    backend = make_backend(srv.base_url, FakeTime(), max_attempts=3)

    async def storm():
        try:
            return await asyncio.gather(*(backend.generate(ask(f"storm {i}", f"s{i}")) for i in range(20)))
        finally:
            await backend.aclose()

    results = asyncio.run(storm())
    answered = [r for r in results if isinstance(r, MinimaLlmResponse)]
    failed = [r for r in results if isinstance(r, MinimaLlmFailure)]
    assert len(answered) == 5 and len(failed) == 15
    assert {f.error_type for f in failed} == {"RateLimited"}
    assert all(f.attempts == 3 for f in failed)
    assert srv.requests_total <= 20 * 3
