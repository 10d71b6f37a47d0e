"""A flaky, slow, rate-limiting or refusing server: every run ends with right answers or a clear failure.

All against the embedded mock server's fault modes, with small backoffs so runs take seconds.
"""

from __future__ import annotations

import threading
import time

import pytest

from minima_nb import BatchAborted, MinimaLlmFailure, MinimaLlmResponse, OpenAIMinimaLlm
from minima_nb.testing import MockServer

from ._support import ask, expected, fast_config, integrity, run_batch, stored_rows

MIXED_FAULTS = ("429", "429-no-retry-after", "500", "502", "503", "504", "timeout", "drop",
                "malformed")


@pytest.mark.timeout(90)
def test_ten_thousand_requests_with_ten_percent_faults_all_answer_right(tmp_path):
    """10,000 prompts, 10 % random faults of 9 kinds: every answer right, one cache row each, attempts within policy."""
    count, max_attempts = 10_000, 8
    prompts = [f"flaky {i}" for i in range(count)]
    # The server holds a "timeout" answer 5 s; the client gives up after 0.5 s and retries.
    with MockServer(fault_rate=0.1, fault_kinds=MIXED_FAULTS, seed=20240607, timeout_delay_s=5.0,
                    ratelimit_headers=False) as srv:
        backend = OpenAIMinimaLlm(fast_config(srv.base_url, cache_dir=str(tmp_path), timeout_s=0.5,
                                              max_attempts=max_attempts))
        results = run_batch(backend, [ask(p) for p in prompts])
        backend.close()
        statuses = srv.responses_by_status
        seen = {p: srv.requests_for(p) for p in prompts}
        total_seen = srv.requests_total

    assert [r.text for r in results] == [expected(p) for p in prompts]
    # Every kind of fault really happened, so each was retried to success.
    assert {0, 429, 500, 502, 503, 504} <= set(statuses)
    assert total_seen > count * 1.05
    assert total_seen <= count * max_attempts
    assert max(seen.values()) <= max_attempts
    assert all(seen[p] <= r.attempts <= max_attempts for p, r in zip(prompts, results, strict=True))
    rows = stored_rows(tmp_path)
    assert len(rows) == count and len({key for key, _, _ in rows}) == count
    assert sorted((prompt, text) for _, prompt, text in rows) == sorted((p, expected(p)) for p in prompts)
    assert integrity(tmp_path) == "ok"


class StatusTimeline:
    """Samples the server's counters every 50 ms from a thread: (requests seen, 429s sent)."""

    def __init__(self, srv: MockServer) -> None:
        self.srv = srv
        self.samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append((self.srv.requests_total, self.srv.responses_by_status.get(429, 0)))

    def __enter__(self) -> StatusTimeline:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def rate_limited_before(self, requests_seen: int) -> int:
        """429s already sent when the server had seen ``requests_seen`` requests."""
        return max((n429 for seen, n429 in self.samples if seen <= requests_seen), default=0)


STORM_LIMIT_RPM, STORM_PER_SECOND, STORM_COUNT = 1200, 20, 200


@pytest.fixture(scope="module")
def storm():
    """One 200-request batch against a 1,200 rpm server enforcing 20 per sliding second."""
    with MockServer(rate_limit=STORM_LIMIT_RPM, rate_window_s=1.0) as srv:
        # Default concurrency: 64 workers, 32 requests in flight.
        backend = OpenAIMinimaLlm(fast_config(srv.base_url, max_attempts=0,
                                              max_retry_after_s=60.0, cooldown_cap_s=30.0))
        with StatusTimeline(srv) as timeline:
            started = time.monotonic()
            results = run_batch(backend, [ask(f"storm {i}") for i in range(STORM_COUNT)])
            elapsed = time.monotonic() - started
        yield {"results": results, "elapsed": elapsed, "statuses": srv.responses_by_status,
               "seen": srv.requests_total, "timeline": timeline,
               "in_flight": backend.config.max_outstanding}


@pytest.mark.timeout(60)
def test_rate_limit_storm_settles_at_the_servers_limit(storm):
    """Against a 1,200 rpm server the client learns the limit: all answered, no 429 late in the run, rate within 10 %."""
    statuses = storm["statuses"]
    assert all(isinstance(r, MinimaLlmResponse) for r in storm["results"])
    assert 0 < statuses.get(429, 0) < STORM_COUNT // 2, statuses
    # Settled: the second half of the run met no 429 at all.
    assert storm["timeline"].rate_limited_before(storm["seen"] // 2) == statuses[429]
    # Sustained rate (one window's burst aside) at most the server's limit + 10 %.
    assert (statuses[200] - STORM_PER_SECOND) / storm["elapsed"] <= STORM_PER_SECOND * 1.1


@pytest.mark.timeout(60)
def test_rate_limit_storm_overshoots_only_with_the_first_blind_wave(storm):
    """429s are at most the first wave's excess (max_outstanding - server's burst) plus 10 % of the requests."""
    excess = storm["in_flight"] - STORM_PER_SECOND
    assert storm["statuses"].get(429, 0) <= excess + STORM_COUNT // 10, storm["statuses"]


@pytest.mark.timeout(60)
def test_server_that_never_answers_fails_every_row_with_request_timeout_in_bounded_time():
    """All requests hang: each row fails as RequestTimeout after max_attempts tries, within a time derived from the config."""
    count, timeout_s, max_attempts = 20, 0.2, 2
    with MockServer(fault_rate=1.0, fault_kinds=("timeout",), timeout_delay_s=60.0) as srv:
        config = fast_config(srv.base_url, timeout_s=timeout_s, max_attempts=max_attempts)
        backend = OpenAIMinimaLlm(config)
        started = time.monotonic()
        results = run_batch(backend, [ask(f"hang {i}") for i in range(count)])
        elapsed = time.monotonic() - started
        seen = srv.requests_total

    assert [type(r) for r in results] == [MinimaLlmFailure] * count
    assert {r.error_type for r in results} == {"RequestTimeout"}
    assert all(r.attempts == max_attempts for r in results)
    assert all(f"within {timeout_s:g}s (timeout_s)" in r.message for r in results)
    assert seen == count * max_attempts
    # Liveness, not speed: even one row at a time would be done within this.
    assert elapsed < count * max_attempts * (timeout_s + config.max_backoff_s) + 10


FATAL = [
    pytest.param("401", "OPENAI_API_KEY", id="401"),
    pytest.param("403", "OPENAI_API_KEY", id="403"),
    pytest.param("quota", "quota", id="insufficient_quota"),
]


@pytest.mark.parametrize("fault,names", FATAL)
@pytest.mark.timeout(30)
def test_fatal_error_aborts_batch_at_the_first_one(fault, names, tmp_path):
    """401, 403 or an exhausted quota stop a 500-row batch at once with a message naming the fix."""
    workers = 8
    with MockServer(fault_rate=1.0, fault_kinds=(fault,)) as srv:
        backend = OpenAIMinimaLlm(fast_config(srv.base_url, cache_dir=str(tmp_path), max_attempts=6,
                                              max_outstanding=workers,
                                              batch={"num_workers": workers, "max_failures": 25}))
        with pytest.raises(BatchAborted) as caught:
            run_batch(backend, [ask(f"fatal {i}") for i in range(500)])
        backend.close()
        seen = srv.requests_total

    message = str(caught.value)
    assert message.startswith("stopped at the first AuthError")
    assert names in message
    assert len(caught.value.results) == 500
    # Nothing retried, nothing sent after the first answer: at most one request per worker.
    assert seen <= workers
    assert sum(r is not None for r in caught.value.results) <= workers


@pytest.mark.timeout(30)
def test_bad_request_is_a_row_failure_counted_against_the_budget():
    """400 fails only its row, is never retried, and more of them than batch.max_failures abort."""
    with MockServer() as srv:
        for prompt in ("bad 3", "bad 7"):
            srv.script(prompt, ["400"])
        backend = OpenAIMinimaLlm(fast_config(srv.base_url, max_attempts=6,
                                              batch={"max_failures": 3}))
        prompts = [f"bad {i}" for i in range(10)]
        results = run_batch(backend, [ask(p) for p in prompts])
        assert srv.requests_for("bad 3") == srv.requests_for("bad 7") == 1

        for i in range(10):
            srv.script(f"worse {i}", ["400"])
        with pytest.raises(BatchAborted) as caught:
            run_batch(backend, [ask(f"worse {i}") for i in range(200)])
        seen_worse = srv.requests_total - 10

    failed = {r.request_id: r for r in results if isinstance(r, MinimaLlmFailure)}
    assert sorted(failed) == ["bad 3", "bad 7"]
    assert all(f.error_type == "ClientError" and f.status == 400 and f.attempts == 1
               for f in failed.values())
    assert all(r.text == expected(r.request_id) for r in results if r.request_id not in failed)
    assert "stopped after 4 failed requests, more than batch.max_failures=3 (BATCH_MAX_FAILURES" in str(caught.value)
    assert "HTTP 400" in str(caught.value)
    assert seen_worse <= 4 + backend.config.batch.num_workers

