"""``generate(via="batch")`` with ``schema=`` and with spend caps, against the mock over a real socket.

The mock's batches answer a requested schema with its deterministic JSON, and its per-prompt
scripts ``invalid-json``/``wrong-json`` make a line's answer unusable, as on the chat endpoint.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Literal

import pandas as pd
import pytest
from _batchapi import FAST, make_config
from pydantic import BaseModel

from minima_nb.batch import BatchJob
from minima_nb.cache import CACHE_FILENAME
from minima_nb.engine.backend import OpenAIMinimaLlm
from minima_nb.errors import BudgetExceeded
from minima_nb.testing import MockServer


class Evidence(BaseModel):
    source: str
    page: int


class Verdict(BaseModel):
    label: Literal["correct", "incorrect"]
    confidence: float
    votes: int
    flagged: bool
    evidence: Evidence


PROMPTS = ["What is 2+2?", "Capital of France?", "Largest planet?", "Smallest prime?"]


def _backend(server: MockServer, directory: Path, **fields: object) -> OpenAIMinimaLlm:
    return OpenAIMinimaLlm(dataclasses.replace(make_config(server, directory), **fields))


def _cached(directory: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(directory / "cache" / CACHE_FILENAME) as conn:
        return conn.execute("SELECT text, params FROM responses").fetchall()


def test_typed_answers_by_batch_equal_the_live_path_and_refused_answers_go_again(tmp_path: Path) -> None:
    frame = pd.DataFrame({"prompt": PROMPTS}, index=list("abcd"))
    with MockServer(**FAST) as server:
        backend = _backend(server, tmp_path / "batch", max_attempts=3)
        server.script("Capital of France?", ["invalid-json", "wrong-json"])  # valid on the third answer
        server.script("Largest planet?", ["wrong-json"] * 3)  # never valid
        out = frame.minima.generate("prompt", backend=backend, schema=Verdict, via="batch", details=True,
                                    progress=False)
        assert server.requests_total == 0 and server.batches.created == 3  # three rounds, no live request
        assert server.batches.lines_for("Capital of France?") == 3 and server.batches.lines_for("What is 2+2?") == 1
        assert out.loc["c"].drop(["error", "cached", "attempts", "model"]).isna().all()
        assert out.loc["c", "error"].startswith("SchemaMismatch: ") and "Verdict" in out.loc["c", "error"]
        assert out.loc[["a", "b", "d"], "label"].isin(["correct", "incorrect"]).all()
        stored = _cached(tmp_path / "batch")
        assert len(stored) == 3 and all(Verdict.model_validate_json(text) for text, _ in stored)
        assert all('"response_format"' in params for _, params in stored)  # the lines asked for the schema
        live_backend = _backend(server, tmp_path / "live", max_attempts=3)
        server.script("Capital of France?", ["invalid-json", "wrong-json"])
        server.script("Largest planet?", ["wrong-json"] * 3)
        live = frame.minima.generate("prompt", backend=live_backend, schema=Verdict, details=True,
                                     progress=False)
        fields = list(Verdict.model_fields)
        pd.testing.assert_frame_equal(out[fields], live[fields])  # same typed columns and dtypes
        assert live.loc["c", "error"].split(":")[0] == out.loc["c", "error"].split(":")[0]
        typed = frame.minima.generate("prompt", backend=backend, schema=Verdict, progress=False)
        assert str(typed["votes"].dtype) == "Int64" and str(typed["flagged"].dtype) == "boolean"
        backend.close()
        live_backend.close()


def test_a_job_opened_by_id_checks_its_answers_against_the_stored_schema(tmp_path: Path) -> None:
    frame = pd.DataFrame({"prompt": PROMPTS[:2]})
    with MockServer(**FAST) as server:
        backend = _backend(server, tmp_path, max_attempts=2)
        server.script("Capital of France?", ["wrong-json"] * 2)
        job = frame.minima.submit("prompt", backend=backend, schema=Verdict, prefix="typed")
        reopened = BatchJob.open(job.job_id, backend)  # e.g. `minima-nb batch wait`, another process
        assert reopened.check is not None
        reopened.wait(progress=False)
        assert len(_cached(tmp_path)) == 1  # the refused answer was not stored by the reopened job
        backend.close()


def test_a_cap_submits_only_the_prompts_its_estimate_covers(tmp_path: Path) -> None:
    frame = pd.DataFrame({"prompt": [f"question number {i}" for i in range(10)]})
    price = {"input": 1_000_000.0, "output": 1_000_000.0}  # $1 per token: the estimate is in dollars of tokens
    with MockServer(**FAST) as server:
        backend = _backend(server, tmp_path)
        guess = frame.minima.estimate("prompt", backend=backend, max_tokens=5, price=price)
        per_prompt = guess.cost_high / guess.to_send
        with pytest.raises(BudgetExceeded, match="estimated") as caught:
            frame.minima.generate("prompt", backend=backend, via="batch", max_tokens=5, price=price,
                                  max_cost=per_prompt * 4.5, progress=False)
        assert server.batches.lines_total == 4 and server.requests_total == 0
        message = str(caught.value)
        assert "only the first 4 prompts" in message and "the other 6" in message and "max_cost=" in message
        partial = caught.value.partial
        assert partial["text"].notna().tolist() == [True] * 4 + [False] * 6
        with pytest.raises(BudgetExceeded, match="nothing was submitted") as nothing:
            frame.minima.generate("prompt", backend=backend, via="batch", max_tokens=5, max_tokens_total=3,
                                  progress=False)
        assert server.batches.created == 1  # the first call's one batch: nothing more was sent
        assert nothing.value.partial["text"].notna().sum() == 4  # the cached rows
        out = frame.minima.generate("prompt", backend=backend, via="batch", max_tokens=5, price=price,
                                    max_cost=per_prompt * 20, progress=False)
        assert out.notna().all() and server.batches.lines_total == 10  # the cached four were not sent again
        backend.close()
