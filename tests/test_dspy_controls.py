"""Per-call controls, DSPy's threads and DSPy's errors, with MinimaLlmDSPyLM on the mock server.

force_refresh and the retry seed reach the engine from the calling task (minima_nb's helpers) and
from Module.batch / dspy.Parallel threads (dspy.context); a sync call from minima_nb's own loop
thread fails clearly instead of deadlocking; upstream failures surface as DSPy's LMError family
with minima_nb's message and never the API key.
"""

from __future__ import annotations

import asyncio

import dspy
import pytest
from _dspy_support import QA, loopback_only
from _mock_backend import close_backend, make_backend

from minima_nb import (
    get_last_cached,
    reset_force_refresh,
    reset_retry_seed,
    run_sync,
    set_force_refresh,
    set_retry_seed,
)
from minima_nb.dspy_adapter import MinimaLlmDSPyLM
from minima_nb.testing import MockServer

SECRET = "sk-test-dspy-0123456789abcdef"


@pytest.fixture
def lm(backend):
    with loopback_only() as refused:
        yield MinimaLlmDSPyLM(backend)
    assert refused == []


def _examples(n: int, prefix: str = "q") -> list[dspy.Example]:
    return [dspy.Example(question=f"{prefix} {i}").with_inputs("question") for i in range(n)]


def test_set_force_refresh_in_the_calling_task_resends(lm, srv):
    """set_force_refresh(True) around an acall skips the cache; reset, the cache answers again."""
    predict = dspy.Predict(QA)

    async def run() -> list[bool]:
        cached = []
        with dspy.context(lm=lm):
            await predict.acall(question="q")
            token = set_force_refresh(True)
            try:
                await predict.acall(question="q")
                cached.append(get_last_cached())
            finally:
                reset_force_refresh(token)
            await predict.acall(question="q")
            cached.append(get_last_cached())
        return cached

    assert asyncio.run(run()) == [False, True]
    assert srv.requests_total == 2
    assert "seed" in srv.last_request_json  # the refresh asked for a new sample


def test_retry_seed_is_the_seed_a_forced_refresh_sends(lm, srv):
    """set_retry_seed(n) with force_refresh sends seed n (sync call in this thread)."""
    with dspy.context(lm=lm):
        dspy.Predict(QA)(question="q")
        force, seed = set_force_refresh(True), set_retry_seed(7)
        try:
            dspy.Predict(QA)(question="q")
        finally:
            reset_retry_seed(seed)
            reset_force_refresh(force)
    assert srv.requests_total == 2
    assert srv.last_request_json["seed"] == 7
    assert srv.last_request_json["temperature"] > 0  # the refresh ramp: a new sample, not the same


def test_module_batch_runs_every_row_and_a_rerun_is_cached(lm, srv):
    """Module.batch(num_threads=8): every example answered once; again, zero requests."""
    examples = _examples(40)
    with dspy.context(lm=lm):
        first = dspy.Predict(QA).batch(examples, num_threads=8, disable_progress_bar=True)
        assert srv.requests_total == 40
        second = dspy.Predict(QA).batch(examples, num_threads=8, disable_progress_bar=True)
    assert [p.answer for p in first] == [f"answer for: q {i}" for i in range(40)]
    assert [p.answer for p in second] == [p.answer for p in first]
    assert srv.requests_total == 40


def test_dspy_context_force_refresh_and_seed_reach_batch_threads(lm, srv):
    """dspy.context(force_refresh=True, retry_seed=5) outside .batch() applies inside its threads."""
    examples = _examples(16)
    with dspy.context(lm=lm):
        dspy.Predict(QA).batch(examples, num_threads=8, disable_progress_bar=True)
        with dspy.context(force_refresh=True, retry_seed=5):
            dspy.Predict(QA).batch(examples, num_threads=8, disable_progress_bar=True)
    assert srv.requests_total == 32
    assert srv.last_request_json["seed"] == 5


def test_dspy_parallel_answers_every_pair(lm, srv):
    """dspy.Parallel over (module, example) pairs from several threads."""
    predict = dspy.Predict(QA)
    pairs = [(predict, example) for example in _examples(12, "p")]
    with dspy.context(lm=lm):
        results = dspy.Parallel(num_threads=4, disable_progress_bar=True)(pairs)
    assert [r.answer for r in results] == [f"answer for: p {i}" for i in range(12)]
    assert srv.requests_total == 12


def test_a_sync_call_from_the_loop_thread_fails_clearly(lm, srv):
    """program(...) inside a coroutine run on minima_nb's loop raises, naming the fix, at once."""

    async def on_the_loop():
        with dspy.context(lm=lm):
            return dspy.Predict(QA)(question="q")

    with pytest.raises(dspy.LMError, match=r"own event-loop thread.*await program\.acall"):
        run_sync(on_the_loop())
    assert srv.requests_total == 0


def _failing_lm(srv: MockServer, tmp_path, **settings) -> tuple[MinimaLlmDSPyLM, object]:
    backend = make_backend(srv, tmp_path / "cache", base_backoff_s=0.01, max_backoff_s=0.05, **settings)
    return MinimaLlmDSPyLM(backend), backend


def test_401_is_lm_auth_error_without_the_key(tmp_path):
    """A rejected key: dspy.LMAuthError with minima_nb's message; the key is nowhere in it."""
    with MockServer(require_api_key="the-right-key", echo_credentials=True) as srv:
        lm, backend = _failing_lm(srv, tmp_path, api_key=SECRET)
        try:
            with dspy.context(lm=lm), pytest.raises(dspy.LMAuthError) as caught:
                dspy.Predict(QA)(question="q")
        finally:
            close_backend(backend)
    text = f"{caught.value} {caught.value!r} {lm!r} {caught.value.minima_failure!r}"
    assert "AuthError" in text and "401" in text
    assert SECRET not in text and SECRET not in repr(lm.history)
    assert caught.value.status == 401 and caught.value.provider == "minima_nb"


def test_429_storm_is_lm_rate_limit_error_after_minima_retries(tmp_path):
    """Every attempt answered 429: minima_nb retries max_attempts times, then dspy.LMRateLimitError."""
    with MockServer(fault_rate=1.0, fault_kinds=("429",), ratelimit_headers=False) as srv:
        lm, backend = _failing_lm(srv, tmp_path, max_attempts=3, max_retry_after_s=0.05)
        try:
            with dspy.context(lm=lm), pytest.raises(dspy.LMRateLimitError, match="after 3 attempts"):
                asyncio.run(dspy.Predict(QA).acall(question="q"))
        finally:
            close_backend(backend)
        assert srv.requests_total == 3  # minima_nb's attempts only: DSPy's retries are off


def test_timeout_is_lm_timeout_error(tmp_path):
    """No answer within timeout_s: dspy.LMTimeoutError."""
    with MockServer(fault_rate=1.0, fault_kinds=("timeout",), timeout_delay_s=5.0) as srv:
        lm, backend = _failing_lm(srv, tmp_path, max_attempts=1, timeout_s=0.2)
        try:
            with dspy.context(lm=lm), pytest.raises(dspy.LMTimeoutError, match="RequestTimeout"):
                dspy.Predict(QA)(question="q")
        finally:
            close_backend(backend)


def test_server_error_is_lm_server_error(tmp_path):
    """5xx on every attempt: dspy.LMServerError."""
    with MockServer(fault_rate=1.0, fault_kinds=("503",)) as srv:
        lm, backend = _failing_lm(srv, tmp_path, max_attempts=2)
        try:
            with dspy.context(lm=lm), pytest.raises(dspy.LMServerError, match="503"):
                dspy.Predict(QA)(question="q")
        finally:
            close_backend(backend)
