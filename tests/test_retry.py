"""Status classification and the retry policy: what is retried, how long to wait, what stays secret."""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest

from minima_nb.config import MinimaLlmConfig
from minima_nb.engine.retry import (
    FATAL_STATUSES,
    RETRYABLE_STATUSES,
    RetryPolicy,
    classify_status,
    is_quota_exhausted,
    retry_after_seconds,
)
from minima_nb.errors import (
    AuthError,
    ClientError,
    ConnectError,
    RateLimited,
    RequestTimeout,
    ServerError,
)

NOW_EPOCH = 1_700_000_000.0
QUOTA_BODY = json.dumps(
    {"error": {"message": "You exceeded your current quota.", "type": "insufficient_quota", "code": "insufficient_quota"}}
).encode()


def error_body(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()


# -- classification ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, ClientError, False), (401, AuthError, False), (403, AuthError, False),
        (404, ClientError, False), (408, ServerError, True), (409, ServerError, True),
        (413, ClientError, False), (418, ClientError, False), (422, ClientError, False),
        (425, ServerError, True), (429, RateLimited, True), (500, ServerError, True),
        (502, ServerError, True), (503, ServerError, True), (504, ServerError, True),
    ],
)
def test_each_status_maps_to_its_error_class(status, kind, retryable):
    """Every status becomes the documented error class with the documented retryable flag."""
    err = classify_status(status, b"", {})
    assert type(err) is kind
    assert err.retryable is retryable
    assert err.status == status


def test_the_status_constants_agree_with_classification():
    """RETRYABLE_STATUSES classify as retryable, FATAL_STATUSES as not."""
    assert all(classify_status(s, b"", {}).retryable for s in RETRYABLE_STATUSES)
    assert not any(classify_status(s, b"", {}).retryable for s in FATAL_STATUSES)


def test_message_includes_status_and_server_message():
    """The message names the status and quotes the server's error.message."""
    err = classify_status(400, error_body("max_tokens is too large"), {})
    assert "400" in str(err) and "max_tokens is too large" in str(err)


def test_server_message_is_cut_to_300_characters():
    """A very long server message is shortened, not pasted whole."""
    err = classify_status(500, error_body("x" * 5000), {})
    assert "x" * 300 in str(err) and "x" * 301 not in str(err)


def test_auth_error_points_at_the_api_key_setting():
    """401 tells the user to check OPENAI_API_KEY."""
    assert "OPENAI_API_KEY" in str(classify_status(401, error_body("Invalid key"), {}))


def test_quota_exhausted_429_is_a_fatal_auth_error():
    """A 429 with insufficient_quota is not a rate limit: it fails at once and says to check billing."""
    err = classify_status(429, QUOTA_BODY, {"retry-after": "1"})
    assert type(err) is AuthError and not err.retryable
    assert "quota" in str(err) and "billing" in str(err)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (QUOTA_BODY, True),
        (QUOTA_BODY.decode(), True),
        (json.dumps({"error": {"code": "insufficient_quota"}}), True),
        (json.dumps({"error": {"code": "rate_limit_exceeded", "message": "slow down"}}), False),
        ("upstream says insufficient_quota <html>", True),
        (b"\xff\xfe not json", False),
        ("", False),
        (None, False),
    ],
)
def test_is_quota_exhausted_reads_code_or_type_and_tolerates_bad_json(body, expected):
    """Quota exhaustion is found in error.code/type, or in a non-JSON body; bad bytes do not raise."""
    assert is_quota_exhausted(body) is expected


# -- Retry-After ------------------------------------------------------------------------------


def test_429_carries_retry_after_seconds():
    """A plain-seconds Retry-After is kept on the RateLimited error."""
    assert classify_status(429, b"", {"Retry-After": "7"}).retry_after == 7.0


def test_retry_after_ms_wins_over_retry_after():
    """OpenAI's retry-after-ms is more precise and takes precedence."""
    assert classify_status(429, b"", {"retry-after": "1", "retry-after-ms": "250"}).retry_after == 0.25


def test_retry_after_http_date_is_read():
    """An HTTP-date Retry-After becomes seconds from now."""
    moment = format_datetime(datetime.fromtimestamp(NOW_EPOCH + 20, tz=timezone.utc), usegmt=True)
    assert retry_after_seconds({"Retry-After": moment}, now_epoch=NOW_EPOCH) == pytest.approx(20.0)


@pytest.mark.parametrize("value", ["soon", "-3", "", "1_0"])
def test_unreadable_retry_after_is_ignored(value):
    """A Retry-After that is not seconds or a date means 'not said'."""
    assert classify_status(429, b"", {"retry-after": value}).retry_after is None


# -- backoff and delay ------------------------------------------------------------------------


def test_backoff_doubles_then_caps_without_jitter():
    """Backoff is base * 2**(attempt-1), capped at max_backoff_s."""
    policy = RetryPolicy(base_backoff_s=0.5, max_backoff_s=20.0, jitter=0.0)
    assert [policy.backoff(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]


def test_backoff_jitter_stays_within_bounds():
    """With jitter 0.2 every backoff lies within +-20 % of the un-jittered value, and varies."""
    policy = RetryPolicy(jitter=0.2)
    rng = random.Random(7)
    values = [policy.backoff(3, rng) for _ in range(200)]
    assert all(1.6 <= v <= 2.4 for v in values)
    assert max(values) - min(values) > 0.4


def test_backoff_at_huge_attempt_numbers_is_the_cap():
    """Attempt 10 000 neither overflows nor exceeds the cap."""
    policy = RetryPolicy(jitter=0.0)
    assert policy.backoff(10_000) == 20.0


def test_delay_uses_retry_after_without_backoff_on_top():
    """A 429 with Retry-After waits about that long, never less, plus at most a little jitter."""
    policy = RetryPolicy()
    err = RateLimited("429", retry_after=5.0)
    delays = [policy.delay(err, attempt=4, rng=random.Random(seed)) for seed in range(50)]
    assert all(5.0 <= d <= 6.0 for d in delays)


def test_retry_after_is_capped():
    """An enormous Retry-After is cut to max_retry_after_s."""
    policy = RetryPolicy(max_retry_after_s=60.0)
    assert policy.delay(RateLimited("429", retry_after=3600.0), 1, random.Random(1)) == 60.0


def test_delay_without_retry_after_is_the_backoff():
    """Errors without a server-given wait use the exponential backoff."""
    policy = RetryPolicy(jitter=0.0)
    assert policy.delay(ServerError("500", status=500), 3) == 2.0


# -- should_retry -----------------------------------------------------------------------------


def test_retries_stop_at_max_attempts():
    """With max_attempts=3, attempts 1 and 2 retry and attempt 3 is the last."""
    policy = RetryPolicy(max_attempts=3)
    err = ServerError("502", status=502)
    assert [policy.should_retry(err, n) for n in (1, 2, 3)] == [True, True, False]


def test_max_attempts_zero_retries_forever():
    """max_attempts=0 still retries at attempt 10 000."""
    assert RetryPolicy(max_attempts=0).should_retry(RateLimited("429"), 10_000)


@pytest.mark.parametrize("status", sorted(FATAL_STATUSES))
def test_fatal_statuses_are_never_retried(status):
    """400/401/403/404/413/422 fail at the first attempt, even with unlimited attempts."""
    assert not RetryPolicy(max_attempts=0).should_retry(classify_status(status, b"", {}), 1)


def test_transport_failures_are_retried():
    """Dropped connections and timeouts are retried (the predecessor gave up after one)."""
    policy = RetryPolicy()
    assert policy.should_retry(ConnectError("dropped"), 1)
    assert policy.should_retry(RequestTimeout("slow"), 1)


def test_overload_is_429_and_503_only():
    """429 and 503 start the shared cooldown; 500 and a quota error do not."""
    policy = RetryPolicy()
    assert policy.is_overload(classify_status(429, b"", {}))
    assert policy.is_overload(classify_status(503, b"", {}))
    assert not policy.is_overload(classify_status(500, b"", {}))
    assert not policy.is_overload(classify_status(429, QUOTA_BODY, {}))


def test_policy_comes_from_config():
    """from_config copies the retry settings."""
    config = MinimaLlmConfig(base_url="http://127.0.0.1:1/v1", model="m", max_attempts=0, base_backoff_s=1.0,
                             max_backoff_s=8.0, jitter=0.1, max_retry_after_s=15.0)
    assert RetryPolicy.from_config(config) == RetryPolicy(0, 1.0, 8.0, 0.1, 15.0)


# -- secrets ----------------------------------------------------------------------------------


def test_messages_never_contain_the_authorization_value():
    """Even when a server echoes the key, the error message masks it."""
    key = "sk-proj-SECRETsecret1234567890"
    headers = {"Authorization": f"Bearer {key}"}
    for status in (400, 401, 403, 429, 500):
        body = error_body(f"Incorrect API key provided: {key}. Header was Bearer {key}")
        message = str(classify_status(status, body, headers))
        assert key not in message and "SECRETsecret" not in message


def test_unknown_key_shapes_echoed_in_a_bearer_header_are_masked():
    """A key of no known shape is masked when the body echoes it after 'Bearer'."""
    message = str(classify_status(401, error_body("got Authorization: Bearer abc123opaque"), {}))
    assert "abc123opaque" not in message
