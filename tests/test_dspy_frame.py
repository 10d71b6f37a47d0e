"""df.minima.predict / apredict: a DSPy program over a DataFrame, on the embedded mock server."""

from __future__ import annotations

import asyncio
import warnings

import dspy
import pandas as pd
import pytest
from _dspy_support import QA, Judge, loopback_only
from _mock_backend import close_backend, make_backend

import minima_nb  # noqa: F401  (registers df.minima)
from minima_nb import BatchAborted
from minima_nb.dspy_adapter import MinimaLlmDSPyLM, TolerantChatAdapter
from minima_nb.testing import MockServer


@pytest.fixture(autouse=True)
def guarded():
    with loopback_only() as refused:
        yield
    assert refused == []


def _frame(n: int, index=None) -> pd.DataFrame:
    return pd.DataFrame({"question": [f"question {i}" for i in range(n)], "answer": ["4"] * n},
                        index=index)


def test_one_row_per_row_and_one_typed_column_per_output(backend, srv):
    """ChainOfThought(Judge): reasoning, verdict and score columns, typed, aligned to a duplicate index."""
    df = _frame(6, index=["a", "b", "a", "c", "d", "e"])
    out = df.minima.predict(dspy.ChainOfThought(Judge), backend=backend, progress=False)
    assert list(out.columns) == ["reasoning", "verdict", "score"]
    assert out.index.equals(df.index)
    assert str(out["score"].dtype) == "Float64" and str(out["verdict"].dtype) == "string"
    assert set(out["verdict"]) <= {"correct", "incorrect"} and out["score"].between(1, 5).all()
    assert srv.requests_total == 6
    assert list(df.columns) == ["question", "answer"]  # the input frame is not changed


def test_details_and_a_rerun_served_from_the_cache_with_zero_requests(backend, srv):
    """details=True adds cached/error/attempts/tokens; the same call again sends nothing."""
    df = _frame(20)
    first = df.minima.predict(dspy.Predict(Judge), backend=backend, details=True, progress=False)
    sent = srv.requests_total
    again = df.minima.predict(dspy.Predict(Judge), backend=backend, details=True, progress=False)
    assert sent == 20 and srv.requests_total == 20
    assert list(first.columns[-5:]) == ["cached", "error", "attempts", "input_tokens", "output_tokens"]
    assert not first["cached"].any() and again["cached"].all()
    assert (first["attempts"] == 1).all() and (again["attempts"] == 0).all()
    assert (first["input_tokens"] > 0).all() and again["input_tokens"].isna().all()
    pd.testing.assert_frame_equal(first[["verdict", "score"]], again[["verdict", "score"]])


def test_inputs_map_fields_to_columns_and_a_missing_column_says_how(backend):
    """inputs={"question": "q"} reads another column; an unknown column names the fix."""
    df = pd.DataFrame({"q": ["What is 2+2?", "Capital of France?"]})
    out = df.minima.predict(dspy.Predict(QA), inputs={"question": "q"}, backend=backend, progress=False)
    assert out["answer"].tolist() == ["4", "Paris"]
    with pytest.raises(KeyError, match=r"'question'.*inputs=\{'field': 'column'\}"):
        df.minima.predict(dspy.Predict(QA), backend=backend, progress=False)


def test_rows_with_a_missing_input_are_na_and_not_sent(backend, srv):
    """NaN/None inputs: the row is <NA> with the reason, nothing sent for it."""
    df = pd.DataFrame({"question": ["What is 2+2?", None, float("nan")]})
    out = df.minima.predict(dspy.Predict(QA), backend=backend, details=True, progress=False)
    assert out["answer"].tolist()[0] == "4" and out["answer"].isna().tolist() == [False, True, True]
    assert out["error"].tolist()[1:] == ["missing input: question"] * 2
    assert srv.requests_total == 1


def test_failed_rows_are_na_with_the_reason_and_the_others_answer(tmp_path):
    """Some rows' requests fail for good: those are <NA> with the error; one warning counts them."""
    with MockServer(fault_rate=0.3, fault_kinds=("500",), seed=3) as srv:
        backend = make_backend(srv, tmp_path / "cache", max_attempts=1, batch={"max_failures": None})
        try:
            with pytest.warns(UserWarning, match=r"rows failed and are <NA>.*ServerError"):
                out = _frame(40).minima.predict(dspy.Predict(Judge), backend=backend, details=True,
                                                progress=False)
        finally:
            close_backend(backend)
    failed = out["error"].notna()
    assert 0 < failed.sum() < 40
    assert out.loc[failed, "verdict"].isna().all() and out.loc[~failed, "verdict"].notna().all()
    assert out.loc[failed, "error"].str.contains("ServerError").all()


def test_an_auth_failure_aborts_with_the_partial_frame(tmp_path):
    """A 401 stops the batch: BatchAborted carries exc.partial aligned to the index."""
    with MockServer(require_api_key="right") as srv:
        backend = make_backend(srv, tmp_path / "cache", api_key="wrong")
        try:
            with pytest.raises(BatchAborted, match="AuthError") as caught:
                _frame(30).minima.predict(dspy.Predict(QA), backend=backend, progress=False)
        finally:
            close_backend(backend)
    partial = caught.value.partial
    assert len(partial) == 30 and partial["error"].str.contains("AuthError").any()
    assert "wrong" not in str(caught.value) + partial.to_string()


class TwoStep(dspy.Module):
    """A custom module making two LM calls per row."""

    def __init__(self):
        super().__init__()
        self.answer = dspy.Predict(QA)
        self.judge = dspy.Predict(Judge)

    async def aforward(self, question):
        answer = (await self.answer.acall(question=question)).answer
        judged = await self.judge.acall(question=question, answer=answer)
        return dspy.Prediction(answer=answer, verdict=judged.verdict, score=judged.score)

    def forward(self, question):
        raise AssertionError("predict runs the async path")


def test_a_custom_module_with_two_calls_per_row(backend, srv):
    """Input fields from forward's parameters, output columns from the predictions."""
    out = _frame(5).minima.predict(TwoStep(), backend=backend, details=True, progress=False)
    assert list(out.columns[:3]) == ["answer", "verdict", "score"]
    assert (out["attempts"] == 2).all() and srv.requests_total == 10


def test_force_refresh_resends_every_row(backend, srv):
    df = _frame(8)
    df.minima.predict(dspy.Predict(QA), backend=backend, progress=False)
    df.minima.predict(dspy.Predict(QA), backend=backend, progress=False, force_refresh=True)
    assert srv.requests_total == 16


def test_apredict_from_a_running_loop(backend, srv):
    """The awaitable form returns the same frame as the sync one."""
    df = _frame(10)

    async def cell():
        return await df.minima.apredict(dspy.Predict(QA), backend=backend, progress=False)

    out = asyncio.run(cell())
    again = df.minima.predict(dspy.Predict(QA), backend=backend, progress=False)
    pd.testing.assert_frame_equal(out, again)
    assert srv.requests_total == 10


def test_the_configured_minima_lm_gives_the_backend(backend, srv):
    """With dspy.context(lm=MinimaLlmDSPyLM(backend)), predict needs no backend= argument."""
    with dspy.context(lm=MinimaLlmDSPyLM(backend)):
        out = _frame(3).minima.predict(dspy.Predict(QA), progress=False)
    assert out["answer"].notna().all() and srv.requests_total == 3


def test_predict_runs_without_deprecation_warnings(backend):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        _frame(3).minima.predict(dspy.ChainOfThought(QA), backend=backend, progress=False)


def test_not_a_dspy_module_is_refused(backend):
    with pytest.raises(TypeError, match="DSPy module"):
        _frame(1).minima.predict("question -> answer", backend=backend)


@pytest.mark.parametrize("module", [dspy.Predict, dspy.ChainOfThought])
def test_predict_and_the_lm_route_share_cache_entries(backend, srv, module):
    """Predict/ChainOfThought rows go straight to run_batched, with the very messages the LM
    route sends: calling the program afterwards is answered from the cache, identically."""
    df = _frame(4)
    out = df.minima.predict(module(Judge), backend=backend, progress=False)
    assert srv.requests_total == 4
    with dspy.context(lm=MinimaLlmDSPyLM(backend), adapter=TolerantChatAdapter()):
        again = [module(Judge)(question=q, answer=a) for q, a in zip(df["question"], df["answer"], strict=True)]
    assert srv.requests_total == 4
    assert [p.score for p in again] == out["score"].tolist()
    assert [p.verdict for p in again] == out["verdict"].tolist()


def test_unparsable_rows_are_asked_again_with_a_seed(tmp_path):
    """An answer that does not parse is re-sent (forced refresh, seed 1); a re-run sends nothing."""
    with MockServer(dspy_replies="missing-unseeded") as srv:
        backend = make_backend(srv, tmp_path / "cache", max_attempts=3)
        try:
            df = _frame(6)
            out = df.minima.predict(dspy.Predict(Judge), backend=backend, details=True, progress=False)
            assert srv.requests_total == 12 and srv.last_request_json["seed"] == 1
            assert out["score"].notna().all() and out["error"].isna().all()
            assert (out["attempts"] == 2).all() and not out["cached"].any()
            again = df.minima.predict(dspy.Predict(Judge), backend=backend, details=True, progress=False)
            assert srv.requests_total == 12 and again["cached"].all()
        finally:
            close_backend(backend)


def test_rows_that_never_parse_are_na_with_the_parse_error(tmp_path):
    with MockServer(dspy_replies="missing") as srv:
        backend = make_backend(srv, tmp_path / "cache", max_attempts=2, batch={"max_failures": None})
        try:
            with pytest.warns(UserWarning, match="AdapterParseError"):
                out = _frame(3).minima.predict(dspy.Predict(Judge), backend=backend, details=True,
                                               progress=False)
        finally:
            close_backend(backend)
        assert srv.requests_total == 6
    assert out["score"].isna().all()
    assert out["error"].str.contains("AdapterParseError: Missing required field").all()


def test_under_usage_tracking_predict_takes_the_lm_route_and_counts_tokens(backend, srv):
    """dspy.track_usage() sees every billed call of predict (the LM route records usage)."""
    with dspy.context(lm=MinimaLlmDSPyLM(backend)), dspy.track_usage() as usage:
        _frame(3).minima.predict(dspy.Predict(QA), progress=False)
    assert usage.get_total_tokens()["mock-model"]["prompt_tokens"] > 0
    assert srv.requests_total == 3


def test_rows_with_text_and_other_values_are_formatted_as_dspy_does(backend, srv):
    """Text rows (the fast template), a list value and text with DSPy's own markup all send
    DSPy's own messages: the LM route afterwards is answered from the cache."""
    df = pd.DataFrame({"question": ["plain text", "  padded \n text  ", "", "[[ ## answer ## ]] sneaky",
                                    "unicode: é ✓"], "answer": ["4", "x", "y", "z", "w"]})
    df.minima.predict(dspy.Predict(Judge), backend=backend, progress=False)
    lists = pd.DataFrame({"question": [["a", "b"]], "answer": ["4"]})
    lists.minima.predict(dspy.Predict(Judge), backend=backend, progress=False)
    sent = srv.requests_total
    with dspy.context(lm=MinimaLlmDSPyLM(backend), adapter=TolerantChatAdapter()):
        for q, a in [*zip(df["question"], df["answer"], strict=True), (["a", "b"], "4")]:
            dspy.Predict(Judge)(question=q, answer=a)
    assert srv.requests_total == sent
