"""``df.minima.sweep``: its cached re-run, typed columns, estimate, spend cap and preview.

Against the embedded mock over a real socket with a real SQLite cache. The mock bills
whitespace words as tokens, so each answer's usage is known exactly.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
from _mock_backend import close_backend, make_backend
from pydantic import BaseModel
from tqdm.notebook import tqdm as notebook_tqdm

from minima_nb.errors import BatchAborted, BudgetExceeded
from minima_nb.notebook.progress import NotebookSink

WORKERS = 4
MODELS = ["mock-a", "mock-b"]


class Grade(BaseModel):
    label: str
    score: int
    confidence: float
    flagged: bool


GRADE_DICT = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "score": {"type": "integer"},
                   "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["label", "score", "tags"],
}


@pytest.fixture
def llm(srv, tmp_path):
    backend = make_backend(srv, tmp_path / "cache", batch={"num_workers": WORKERS})
    yield backend
    close_backend(backend)


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"prompt": [f"tell me about item number {i}" for i in range(n)]},
                        index=[f"r{i}" for i in range(n)])


def test_a_cached_rerun_of_a_sweep_sends_nothing_and_keeps_its_frame(srv, llm):
    df = _frame(5)
    first = df.minima.sweep("prompt", backend=llm, progress=False, model=MODELS, temperature=[0, 1])
    assert srv.requests_total == 20 and not first["cached"].any()
    srv.reset_counts()
    again = df.minima.sweep("prompt", backend=llm, progress=False, model=MODELS, temperature=[0, 1])
    assert srv.requests_total == 0 and again["cached"].all()
    columns = ["row", "model", "temperature", "text", "input_tokens", "output_tokens"]
    assert again[columns].equals(first[columns])


@pytest.mark.parametrize("schema, dtypes", [
    (Grade, {"label": "string", "score": "Int64", "confidence": "Float64", "flagged": "boolean"}),
    (GRADE_DICT, {"label": "string", "score": "Int64", "tags": "object"}),
])
def test_sweep_typed_columns_for_a_model_and_a_json_schema(srv, llm, schema, dtypes):
    df = _frame(3)
    runs = df.minima.sweep("prompt", backend=llm, progress=False, schema=schema, model=MODELS)
    fields = list(dtypes)
    assert list(runs.columns[:2 + len(fields)]) == ["row", "model", *fields]
    assert runs[fields].dtypes.astype(str).to_dict() == dtypes
    assert runs[fields].notna().all().all() and runs["error"].isna().all()
    again = df.minima.sweep("prompt", backend=llm, progress=False, schema=schema, model=MODELS)
    assert again["cached"].all()  # the cached re-run gives the same typed frame
    assert again[fields].equals(runs[fields])


def test_estimate_of_a_sweep_against_a_half_full_cache_sends_nothing(srv, llm):
    df = _frame(10)
    df.minima.sweep("prompt", backend=llm, progress=False, model=MODELS[0], max_tokens=40)
    srv.reset_counts()
    est = df.minima.estimate("prompt", backend=llm, model=MODELS, max_tokens=40,
                             price={"input": 1.0, "output": 2.0}, tokenizer="chars")
    assert srv.requests_total == 0
    assert (est.rows, est.distinct_prompts, est.cached, est.to_send) == (20, 20, 10, 10)
    assert est.input_tokens == sum(3 + 4 + math.ceil(len(p) / 4) for p in df["prompt"])
    # mock-b has no cached answers: its output is its max_tokens (mock-a's mean is unused, all cached)
    assert est.output_tokens == est.output_tokens_max == 10 * 40
    assert est.output_basis == "max_tokens"
    assert est.cost_high == pytest.approx((est.input_tokens + 2 * 400) / 1e6)


def test_estimate_of_a_sweep_is_the_sum_of_its_combinations(srv, llm):
    df = _frame(6)
    df.head(3).minima.generate("prompt", backend=llm, progress=False, model=MODELS[1], temperature=0.7,
                                 max_tokens=30)
    grid = df.minima.estimate("prompt", backend=llm, model=MODELS, temperature=[0, 0.7],
                              max_tokens=30, tokenizer="chars")
    parts = [df.minima.estimate("prompt", backend=llm, model=m, temperature=t, max_tokens=30,
                                tokenizer="chars") for m in MODELS for t in (0, 0.7)]
    for field in ("rows", "distinct_prompts", "cached", "to_send", "input_tokens", "output_tokens_max"):
        assert getattr(grid, field) == sum(getattr(p, field) for p in parts), field
    assert grid.cached == 3 and srv.requests_total == 3  # only the generate above was sent


def test_the_cap_stops_a_sweep_within_one_wave_and_keeps_every_answer(srv, llm):
    df = _frame(60)
    per_request = 6 + 8  # mock words: "tell me about item number N" / "[mock-x] echo: ..."
    cap = 40 * per_request
    with pytest.raises(BudgetExceeded) as caught:
        df.minima.sweep("prompt", backend=llm, progress=False, model=MODELS, max_tokens_total=cap)
    exc = caught.value
    assert isinstance(exc, BatchAborted) and "token cap" in str(exc)
    partial = exc.partial
    assert len(partial) == 120 and list(partial.columns[:2]) == ["row", "model"]
    answered = partial[partial["text"].notna()]
    billed = int(answered["input_tokens"].sum() + answered["output_tokens"].sum())
    assert cap - (WORKERS + 1) * per_request < billed <= cap
    assert srv.requests_total == len(answered)  # every request sent was answered and kept
    again = df.minima.sweep("prompt", backend=llm, progress=False, model=MODELS)
    assert int(again["cached"].sum()) == len(answered)  # all of them in the cache


def test_a_sweep_with_max_cost_shows_the_spend_and_names_the_combination_in_the_preview(srv, llm):
    sink = NotebookSink(tqdm_cls=notebook_tqdm)
    _frame(4).minima.sweep("prompt", backend=llm, progress=sink, model=MODELS, temperature=0.5,
                           max_cost=1.0, price={"input": 0.15, "output": 0.60})
    value = sink.preview.widget.value
    assert "✓ [model=mock-" in value and "] tell me about item number" in value
    assert "temperature" not in value  # not swept: the same on every line
    assert "echo: tell me about item" in value
    shown = sink.bar.container.children[2].value.replace("\u2007", " ")
    assert "spent $0.0000 of $1.00" in shown and "rows/s" in shown


def test_sweep_preview_false_turns_it_off(srv, llm):
    sink = NotebookSink(tqdm_cls=notebook_tqdm)
    _frame(2).minima.sweep("prompt", backend=llm, progress=sink, model=MODELS, preview=False)
    assert sink.preview is None and sink.bar.n == 4
