"""Spend control: ``df.minima.estimate`` (sends nothing) and ``generate(max_cost=/max_tokens_total=)``.

Against the embedded mock over a real socket, with a real SQLite cache. The mock bills
whitespace words as tokens, so each answer's usage is known exactly.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
from _mock_backend import close_backend, make_backend

from minima_nb.errors import BatchAborted, BudgetExceeded, ConfigError

PRICE = {"input": 0.15, "output": 0.60}
WORKERS = 4


@pytest.fixture
def llm(srv, tmp_path):
    backend = make_backend(srv, tmp_path / "cache", batch={"num_workers": WORKERS})
    yield backend
    close_backend(backend)


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"prompt": [f"tell me about item number {i}" for i in range(n)]})


def _chars_tokens(text: str) -> int:
    return 3 + 4 + math.ceil(len(text) / 4)  # the documented rule: one user message per request


def test_estimate_against_a_half_full_cache_sends_nothing(srv, llm):
    df = _frame(20)
    df = pd.concat([df, df.head(2)], ignore_index=True)  # 22 rows, 20 distinct prompts
    df.loc[len(df)] = [None]  # a row without a prompt is not counted
    df.head(10).minima.generate("prompt", backend=llm, max_tokens=50, progress=False)
    srv.reset_counts()
    est = df.minima.estimate("prompt", backend=llm, max_tokens=50, price=PRICE, tokenizer="chars")
    assert srv.requests_total == 0  # nothing was sent for the estimate
    assert (est.rows, est.distinct_prompts, est.cached, est.to_send) == (22, 20, 10, 10)
    expected_in = sum(_chars_tokens(p) for p in df["prompt"][10:20])
    assert est.input_tokens == expected_in
    answers = llm.lookup([[{"role": "user", "content": p}] for p in df["prompt"][:10]],
                         max_tokens=50)
    mean_out = sum(row[2] for row in answers) / 10
    assert est.output_tokens == round(mean_out * 10) and est.output_tokens_max == 500
    assert est.output_basis.startswith("mean of mock-model's cached answers")
    assert est.cost_low == pytest.approx((expected_in * 0.15 + round(mean_out * 10) * 0.60) / 1e6)
    assert est.cost_high == pytest.approx((expected_in * 0.15 + 500 * 0.60) / 1e6)
    text = str(est)
    assert "to send 10" in text and "cost $" in text and "4 chars/token" in text


def test_estimate_without_cache_or_max_tokens_says_output_is_unknown(srv, llm):
    est = _frame(3).minima.estimate("prompt", backend=llm, tokenizer="chars")
    assert est.cached == 0 and est.to_send == 3 and est.output_tokens is None
    assert est.cost_low is None and "unknown" in est.output_basis and "no price given" in str(est)
    assert srv.requests_total == 0


def _usage(partial: pd.DataFrame) -> int:
    answered = partial[partial["text"].notna()]
    return int(answered["input_tokens"].sum() + answered["output_tokens"].sum())


@pytest.mark.parametrize("kind", ["tokens", "cost"])
def test_the_cap_stops_within_one_wave_and_keeps_every_answer(srv, llm, kind):
    df = _frame(200)
    per_request = 6 + 8  # mock words: "tell me about item number N" / "[mock-model] echo: ..."
    cap = 40 * per_request
    options = ({"max_tokens_total": cap} if kind == "tokens" else
               {"max_cost": cap / 1e6 * 1.0, "price": {"input": 1.0, "output": 1.0}})
    with pytest.raises(BudgetExceeded) as caught:
        df.minima.generate("prompt", backend=llm, progress=False, **options)
    exc = caught.value
    assert isinstance(exc, BatchAborted) and "cap" in str(exc)
    partial = exc.partial
    answered = int(partial["text"].notna().sum())
    billed = _usage(partial)
    assert billed <= cap  # the in-flight estimate kept the spend under the cap
    assert billed > cap - (WORKERS + 1) * per_request  # ...and stopped within one wave of it
    assert srv.requests_total == answered  # every request sent was answered and kept
    again = df.minima.generate("prompt", backend=llm, details=True, progress=False)
    assert int(again["cached"].sum()) == answered  # all of them are in the cache


def test_max_cost_needs_a_price(llm):
    with pytest.raises(ConfigError, match="price="):
        _frame(2).minima.generate("prompt", backend=llm, max_cost=1.0, progress=False)


def test_agenerate_and_the_series_accessor_take_the_cap(srv, llm):
    import asyncio

    df = _frame(60)
    cap = 10 * (6 + 8)

    async def cell():
        return await df.minima.agenerate("prompt", backend=llm, progress=False, max_tokens_total=cap)

    with pytest.raises(BudgetExceeded) as caught:
        asyncio.run(cell())
    assert _usage(caught.value.partial) <= cap and len(caught.value.partial) == 60
    with pytest.raises(BudgetExceeded) as caught:
        df["prompt"].minima.generate(backend=llm, progress=False, max_cost=2 * cap / 1e6,
                                     price={"input": 1.0, "output": 1.0})
    partial = caught.value.partial  # the first call's answers came from the cache, unbilled
    assert _usage(partial[~partial["cached"].fillna(False)]) <= 2 * cap
    assert int(partial["cached"].sum()) >= 10 and int(partial["text"].notna().sum()) < 60
