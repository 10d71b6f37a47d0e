"""minima-llm's DSPy batch helpers on minima_nb: run_dspy_batch, run_dspy_batch_generic, print_dspy_prompt."""

from __future__ import annotations

import asyncio

import dspy
import pydantic
import pytest
from _dspy_support import QA, Judge, loopback_only
from _mock_backend import close_backend, make_backend

from minima_nb import MinimaLlmConfig, OpenAIMinimaLlm
from minima_nb.dspy_adapter import print_dspy_prompt, run_dspy_batch, run_dspy_batch_generic
from minima_nb.testing import MockServer


class Item(pydantic.BaseModel):
    question: str
    answer: str = "4"
    verdict: str | None = None
    score: float | None = None


def _judged(prediction, item: Item) -> None:
    item.verdict, item.score = prediction.verdict, prediction.score


@pytest.fixture
def guarded():
    with loopback_only() as refused:
        yield
    assert refused == []


def test_run_dspy_batch_fills_every_object_and_a_rerun_sends_nothing(guarded, backend, srv):
    """Every object gets its typed outputs; the same batch again is answered from the cache."""
    items = [Item(question=f"question {i}") for i in range(30)]
    out = asyncio.run(run_dspy_batch(Judge, items, _judged, backend, progress=False))
    assert out is not items and out == items
    assert all(i.verdict in ("correct", "incorrect") and isinstance(i.score, float) for i in items)
    assert srv.requests_total == 30
    again = [Item(question=f"question {i}") for i in range(30)]
    asyncio.run(run_dspy_batch(Judge, again, _judged, backend, progress=False))
    assert again == items and srv.requests_total == 30


def test_parse_failures_are_retried_with_force_refresh_and_a_new_seed(guarded, tmp_path):
    """An unparsable first answer is asked again with seed 1 (forced refresh), which parses."""
    with MockServer(dspy_replies="missing-unseeded") as srv:
        backend = make_backend(srv, tmp_path / "cache", max_attempts=3)
        try:
            items = [Item(question=f"q{i}") for i in range(5)]
            asyncio.run(run_dspy_batch(Judge, items, _judged, backend, dspy.Predict, progress=False))
            assert srv.requests_total == 10  # each row: the broken answer, then the seeded retry
            assert srv.last_request_json["seed"] == 1
            assert all(i.score is not None for i in items)
            # the retry's answer replaced the broken one in the cache: a re-run sends nothing
            asyncio.run(run_dspy_batch(Judge, [Item(question="q0")], _judged, backend, dspy.Predict,
                                       progress=False))
            assert srv.requests_total == 10
        finally:
            close_backend(backend)


def test_rows_that_never_parse_fail_after_max_attempts_and_are_listed(guarded, tmp_path):
    """Always unparsable: max_attempts tries per row, then a RuntimeError naming the rows."""
    with MockServer(dspy_replies="missing") as srv:
        backend = make_backend(srv, tmp_path / "cache", max_attempts=2)
        try:
            with pytest.raises(RuntimeError, match=r"(?s)3 of 3 DSPy predictions failed.*row-0: AdapterParseError: Missing required field: score"):
                asyncio.run(run_dspy_batch(Judge, [Item(question=f"q{i}") for i in range(3)], _judged,
                                           backend, dspy.Predict, progress=False))
        finally:
            close_backend(backend)
        assert srv.requests_total == 6


def test_run_dspy_batch_generic_in_a_script_and_inside_a_running_loop(guarded, srv, tmp_path):
    """The sync helper works from plain code and from inside a running event loop (a kernel cell)."""
    config = MinimaLlmConfig(base_url=srv.base_url, model="mock-model", rpm=0, cache_dir=str(tmp_path / "c"))

    def answer(prediction, item: Item) -> None:
        item.verdict = prediction.answer

    items = [Item(question="What is 2+2?"), Item(question="Capital of France?")]
    assert [i.verdict for i in run_dspy_batch_generic(items, QA, answer, config)] == ["4", "Paris"]

    async def in_a_cell():
        fresh = [Item(question="What is 2+2?")]
        return run_dspy_batch_generic(fresh, QA, answer, config)

    assert [i.verdict for i in asyncio.run(in_a_cell())] == ["4"]
    assert srv.requests_total == 2  # the second call was a cache hit
    assert run_dspy_batch_generic([], QA, answer, config) == []


def test_run_dspy_batch_accepts_dicts(guarded, backend):
    """Plain dicts work as the objects too."""
    rows = [{"question": "What is 2+2?"}]
    asyncio.run(run_dspy_batch(QA, rows, lambda p, row: row.update(answer=p.answer), backend,
                               dspy.Predict, progress=False))
    assert rows == [{"question": "What is 2+2?", "answer": "4"}]


def test_print_dspy_prompt_shows_the_messages(capsys):
    """The system and user messages DSPy's chat format sends for the inputs."""
    messages = print_dspy_prompt(QA, {"question": "What is 2+2?"})
    out = capsys.readouterr().out
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "--- system ---" in out and "[[ ## question ## ]]\nWhat is 2+2?" in out


def test_an_auth_failure_stops_the_batch(guarded, tmp_path):
    """A 401 on the first row aborts the batch at once (every row would fail the same way)."""
    from minima_nb import BatchAborted

    with MockServer(require_api_key="right") as srv:
        backend = OpenAIMinimaLlm(MinimaLlmConfig(base_url=srv.base_url, model="mock-model", rpm=0,
                                                  api_key="wrong", cache_dir=str(tmp_path / "c")))
        try:
            with pytest.raises(BatchAborted, match="AuthError"):
                asyncio.run(run_dspy_batch(QA, [Item(question=f"q{i}") for i in range(50)],
                                           lambda p, i: None, backend, dspy.Predict, progress=False))
        finally:
            close_backend(backend)
        assert srv.requests_total < 50
