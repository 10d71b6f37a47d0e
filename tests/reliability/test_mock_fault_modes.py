"""The mock server's fault modes this suite relies on, checked over a raw socket (http.client)."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from minima_nb.testing import MockServer


def post(srv: MockServer, prompt: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    """One chat request with http.client (which never follows redirects): status, headers, body."""
    url = urlsplit(srv.base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    body = json.dumps({"model": "mock-model", "messages": [{"role": "user", "content": prompt}]})
    try:
        conn.request("POST", url.path + "/chat/completions", body=body,
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_max_body_bytes_answers_413_above_the_limit():
    """max_body_bytes: a body over the limit gets an OpenAI-style 413; a small one is answered."""
    with MockServer(max_body_bytes=2_000) as srv:
        big_status, _, big_body = post(srv, "x" * 3_000)
        small_status, _, _ = post(srv, "small")
        assert srv.requests_for("x" * 3_000) == 1
    assert (big_status, small_status) == (413, 200)
    assert json.loads(big_body)["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("status", [302, 307])
def test_redirect_to_answers_every_chat_request_with_a_redirect(status):
    """redirect_to/redirect_status: every chat request gets that redirect with a Location header."""
    with MockServer(redirect_to="http://127.0.0.2:9/v1/chat/completions", redirect_status=status) as srv:
        got, headers, _ = post(srv, "go away")
        assert srv.responses_by_status == {status: 1}
    assert got == status and headers["location"] == "http://127.0.0.2:9/v1/chat/completions"


def test_echo_credentials_quotes_the_authorization_header_in_errors():
    """echo_credentials: an error body's message repeats the Authorization header; answers are unchanged."""
    with MockServer(echo_credentials=True) as srv:
        srv.script("fail", ["500"])
        failed, _, body = post(srv, "fail", {"Authorization": "Bearer sk-echo-me"})
        ok, _, answer = post(srv, "fine", {"Authorization": "Bearer sk-echo-me"})
    assert failed == 500 and "Bearer sk-echo-me" in json.loads(body)["error"]["message"]
    assert ok == 200 and b"sk-echo-me" not in answer


def test_rate_window_enforces_the_per_minute_limit_over_a_shorter_window():
    """rate_window_s=1 with 120 rpm admits 2 per second and reports the per-minute limit."""
    with MockServer(rate_limit=120, rate_window_s=1.0) as srv:
        replies = [post(srv, f"r{i}") for i in range(3)]
    assert [status for status, _, _ in replies] == [200, 200, 429]
    headers = replies[1][1]
    assert headers["x-ratelimit-limit-requests"] == "120"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert replies[2][1]["retry-after"] == "1"


def test_scripted_429_without_ratelimit_headers_sends_only_retry_after():
    """ratelimit_headers=False: a scripted "429" carries Retry-After and no made-up x-ratelimit-* limit."""
    with MockServer(ratelimit_headers=False) as srv:
        srv.script("p", ["429"])
        status, headers, _ = post(srv, "p")
    assert status == 429 and headers["retry-after"] == "1"
    assert not [h for h in headers if h.startswith("x-ratelimit")]


def test_a_hidden_limit_can_refuse_without_retry_after_and_be_raised_mid_run():
    """ratelimit_headers=False, retry_after=False: a bare 429; set_rate_limit raises the limit at once."""
    with MockServer(rate_limit=60, rate_window_s=1.0, ratelimit_headers=False, retry_after=False) as srv:
        first, refused = post(srv, "h1"), post(srv, "h2")
        srv.set_rate_limit(180)  # 3 per sliding second now, the one already admitted counted
        raised = [post(srv, f"h{i}")[0] for i in range(3, 6)]
    assert first[0] == 200 and refused[0] == 429
    assert "retry-after" not in refused[1] and not [h for h in refused[1] if h.startswith("x-ratelimit")]
    assert raised == [200, 200, 429]
