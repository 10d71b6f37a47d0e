"""``df.minima.predict``'s spend control and preview: estimate(program), max_cost=/max_tokens_total=.

On the embedded mock over a real socket, a real SQLite cache and real DSPy. The estimate formats
each row with DSPy's own adapter and sends nothing; the cap stops within one wave of rows.
"""

from __future__ import annotations

import asyncio
import math
import re

import dspy
import pandas as pd
import pytest
from _dspy_support import QA, Judge, loopback_only
from _mock_backend import close_backend, make_backend
from test_dspy_frame import TwoStep
from tqdm.notebook import tqdm as notebook_tqdm

import minima_nb  # noqa: F401  (registers df.minima)
from minima_nb import BatchAborted, BudgetExceeded
from minima_nb.dspy_adapter import TolerantChatAdapter
from minima_nb.notebook.progress import NotebookSink

WORKERS = 4


@pytest.fixture(autouse=True)
def guarded():
    with loopback_only() as refused:
        yield
    assert refused == []


@pytest.fixture
def llm(srv, tmp_path):
    backend = make_backend(srv, tmp_path / "cache", batch={"num_workers": WORKERS},
                           max_outstanding=WORKERS)
    yield backend
    close_backend(backend)


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"question": [f"question number {i}" for i in range(n)], "answer": ["4"] * n})


def _chars_tokens(messages) -> int:
    return 3 + sum(4 + math.ceil(len(m["content"]) / 4) for m in messages)


def test_estimate_of_a_program_formats_like_dspy_and_sends_nothing(srv, llm):
    df = _frame(10)
    df.head(5).minima.predict(dspy.ChainOfThought(Judge), backend=llm, progress=False)
    srv.reset_counts()
    est = df.minima.estimate(dspy.ChainOfThought(Judge), backend=llm, tokenizer="chars",
                             price={"input": 1.0, "output": 1.0})
    assert srv.requests_total == 0
    assert (est.rows, est.distinct_prompts, est.cached, est.to_send) == (10, 10, 5, 5)
    adapter, signature = TolerantChatAdapter(), dspy.ChainOfThought(Judge).predict.signature
    formatted = [adapter.format(signature, [], dict(row)) for row in df.tail(5).to_dict("records")]
    assert est.input_tokens == sum(_chars_tokens(m) for m in formatted)
    assert est.output_basis.startswith("mean of mock-model's cached answers") and est.output_tokens > 0
    out = df.minima.predict(dspy.ChainOfThought(Judge), backend=llm, progress=False, details=True)
    assert srv.requests_total == est.to_send and int((~out["cached"]).sum()) == 5


def test_estimate_of_a_program_with_inputs_and_of_a_custom_module(srv, llm):
    df = pd.DataFrame({"q": ["What is 2+2?", "Capital of France?", None]})
    est = df.minima.estimate(dspy.Predict(QA), inputs={"question": "q"}, backend=llm, tokenizer="chars")
    assert (est.rows, est.to_send) == (2, 2)  # a row with a missing input is not sent
    with pytest.raises(TypeError, match="only dspy.Predict and dspy.ChainOfThought"):
        _frame(2).minima.estimate(TwoStep(), backend=llm)
    with pytest.raises(TypeError, match="predict\\(\\)'s arguments"):
        _frame(2).minima.estimate(dspy.Predict(QA), backend=llm, model=["a", "b"])
    assert srv.requests_total == 0


def test_predict_refuses_schema_and_says_the_signature_types_the_outputs(llm):
    with pytest.raises(TypeError, match="signature types the outputs"):
        _frame(2).minima.predict(dspy.Predict(Judge), backend=llm, schema={"type": "object"})


def _billed(partial: pd.DataFrame) -> tuple[int, int]:
    answered = partial[partial["error"].isna() & partial["input_tokens"].notna()]
    return len(answered), int(answered["input_tokens"].sum() + answered["output_tokens"].sum())


@pytest.mark.parametrize("route", ["direct", "lm"])
def test_the_cap_stops_predict_within_one_wave_and_keeps_every_answer(srv, llm, route):
    df = _frame(80)
    program = dspy.Predict(QA) if route == "direct" else TwoStep()
    calls = 1 if route == "direct" else 2
    probe = df.head(1).minima.predict(program, backend=llm, progress=False, details=True)
    per_row = int(probe["input_tokens"].iloc[0] + probe["output_tokens"].iloc[0])
    srv.reset_counts()
    cap = 20 * per_row
    with pytest.raises(BudgetExceeded) as caught:
        df.minima.predict(program, backend=llm, progress=False, max_tokens_total=cap)
    exc = caught.value
    assert isinstance(exc, BatchAborted) and "token cap" in str(exc)
    partial = exc.partial
    assert len(partial) == 80 and partial.index.equals(df.index)
    answered, billed = _billed(partial)
    assert billed <= cap  # the rows in flight were counted before taking another
    assert billed > cap - (WORKERS + 1) * per_row  # ...and it did not stop early
    assert srv.requests_total == answered * calls  # every request sent was answered and kept
    again = df.minima.predict(program, backend=llm, progress=False, details=True)
    assert int(again["cached"].sum()) == answered + 1  # all of them in the cache (and the probe)


def test_apredict_takes_the_cap_too(srv, llm):
    async def cell():
        return await _frame(40).minima.apredict(dspy.Predict(QA), backend=llm, progress=False,
                                                max_cost=1e-9, price={"input": 1.0, "output": 1.0})

    with pytest.raises(BudgetExceeded) as caught:
        asyncio.run(cell())
    assert len(caught.value.partial) == 40 and srv.requests_total <= WORKERS


def test_max_cost_on_predict_needs_a_price(llm):
    with pytest.raises(minima_nb.ConfigError, match="price="):
        _frame(2).minima.predict(dspy.Predict(QA), backend=llm, max_cost=1.0, progress=False)


@pytest.mark.parametrize("route", ["direct", "lm"])
def test_the_preview_shows_input_and_output_fields(srv, llm, route):
    program = dspy.ChainOfThought(Judge) if route == "direct" else TwoStep()
    sink = NotebookSink(tqdm_cls=notebook_tqdm)
    _frame(6).minima.predict(program, backend=llm, progress=sink, max_cost=1.0,
                             price={"input": 0.15, "output": 0.60})
    value = sink.preview.widget.value
    assert "✓ question: question number" in value
    assert "verdict: " in value and " · score: " in value  # parsed fields, not DSPy's markup
    assert "[[ ##" not in value
    if route == "direct":
        assert " · answer: 4" in value and value.index("score: ") < value.index("reasoning: ")
    shown = sink.bar.container.children[2].value.replace("\u2007", " ")
    assert re.search(r"spent \$0\.\d{4} of \$1\.00", shown) and "rows/s" in shown


def test_predict_preview_false_turns_it_off(srv, llm):
    sink = NotebookSink(tqdm_cls=notebook_tqdm)
    _frame(2).minima.predict(dspy.Predict(QA), backend=llm, progress=sink, preview=False)
    assert sink.preview is None and sink.bar.n == 2
