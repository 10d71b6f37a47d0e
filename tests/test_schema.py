"""Typed answers: ``generate(..., schema=...)`` against the embedded mock over a real socket.

The mock honours ``response_format`` (json_schema) with deterministic valid JSON and a schema
in the system message (prompt mode) with JSON wrapped in prose and a fence; its scripted faults
``invalid-json`` and ``wrong-json`` make the first answers unusable.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Literal

import pandas as pd
import pytest
from _mock_backend import close_backend, make_backend
from pydantic import BaseModel

from minima_nb.cache import CACHE_FILENAME
from minima_nb.errors import ConfigError
from minima_nb.notebook.schema import AnswerSchema, extract_json


class Evidence(BaseModel):
    source: str
    page: int


class Verdict(BaseModel):
    label: Literal["correct", "incorrect"]
    confidence: float
    reason: str
    votes: int
    flagged: bool
    evidence: Evidence


VERDICT_DICT = {
    "type": "object",
    "title": "Verdict",
    "properties": {
        "label": {"type": "string", "enum": ["correct", "incorrect"]},
        "score": {"type": "integer", "minimum": 0, "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string"}},
        "meta": {"type": "object", "properties": {"lang": {"type": "string"}},
                 "required": ["lang"]},
    },
    "required": ["label", "score", "tags", "meta"],
}

PROMPTS = ["What is 2+2?", "Capital of France?", "Largest planet?"]


@pytest.fixture
def frame():
    return pd.DataFrame({"prompt": PROMPTS}, index=["a", "b", "c"])


def _cache_texts(cache_dir) -> list[str]:
    with sqlite3.connect(cache_dir / CACHE_FILENAME) as conn:
        return [row[0] for row in conn.execute("SELECT text FROM responses")]


def test_pydantic_schema_gives_typed_columns_aligned_to_index(srv, backend, frame):
    out = frame.minima.generate("prompt", backend=backend, schema=Verdict, progress=False)
    assert list(out.columns) == ["label", "confidence", "reason", "votes", "flagged", "evidence"]
    assert list(out.index) == ["a", "b", "c"]
    assert {c: str(t) for c, t in out.dtypes.items()} == {
        "label": "string", "confidence": "Float64", "reason": "string", "votes": "Int64",
        "flagged": "boolean", "evidence": "object"}
    assert out["label"].isin(["correct", "incorrect"]).all()
    assert all(isinstance(e, dict) and set(e) == {"source", "page"} for e in out["evidence"])
    sent = srv.last_request_json["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Verdict"
    assert sent["json_schema"]["strict"] is True  # every field required: strict mode allowed
    assert sent["json_schema"]["schema"]["additionalProperties"] is False


def test_json_schema_dict_gives_typed_columns(srv, backend, frame):
    out = frame.minima.generate("prompt", backend=backend, schema=VERDICT_DICT, progress=False)
    assert {c: str(t) for c, t in out.dtypes.items()} == {
        "label": "string", "score": "Int64", "tags": "object", "meta": "object"}
    assert all(isinstance(t, list) for t in out["tags"])
    assert all(isinstance(m, dict) and "lang" in m for m in out["meta"])
    assert out["score"].between(0, 5).all()


def test_details_add_the_usual_columns_and_the_raw_text(srv, backend, frame):
    out = frame.minima.generate("prompt", backend=backend, schema=Verdict, details=True,
                                progress=False)
    assert list(out.columns)[:6] == ["label", "confidence", "reason", "votes", "flagged", "evidence"]
    assert {"text", "cached", "error", "input_tokens", "output_tokens", "attempts"} <= set(out.columns)
    first = json.loads(out.loc["a", "text"])  # the raw answer, as the server sent it
    assert first["label"] == out.loc["a", "label"]


def test_optional_fields_are_sent_without_strict_mode(srv, backend, frame):
    class Loose(BaseModel):
        answer: str
        note: str | None = None

    out = frame.minima.generate("prompt", backend=backend, schema=Loose, progress=False)
    assert srv.last_request_json["response_format"]["json_schema"]["strict"] is False
    assert out["answer"].notna().all() and str(out["answer"].dtype) == "string"


def test_invalid_then_valid_is_asked_again_and_only_the_valid_answer_is_cached(srv, tmp_path, frame):
    backend = make_backend(srv, tmp_path / "cache")
    try:
        srv.script("Capital of France?", ["invalid-json", "wrong-json"])
        out = frame.minima.generate("prompt", backend=backend, schema=Verdict, details=True,
                                    progress=False)
        assert srv.requests_for("Capital of France?") == 3  # two refused, the third validated
        assert out.loc["b", "label"] in ("correct", "incorrect") and pd.isna(out.loc["b", "error"])
        assert out.loc["b", "attempts"] == 3
        texts = _cache_texts(tmp_path / "cache")
        assert len(texts) == 3 and all(Verdict.model_validate_json(t) for t in texts)
    finally:
        close_backend(backend)


def test_invalid_every_time_is_na_with_the_reason_and_never_cached(srv, tmp_path, frame):
    backend = make_backend(srv, tmp_path / "cache", max_attempts=3)
    try:
        srv.script("Largest planet?", ["wrong-json"] * 3)
        with pytest.warns(UserWarning, match="1 of 3 rows failed"):
            plain = frame.minima.generate("prompt", backend=backend, schema=Verdict,
                                          progress=False)
        assert plain.loc["c"].isna().all() and plain.loc["a"].notna().all()
        assert srv.requests_for("Largest planet?") == 3
        srv.script("Largest planet?", ["invalid-json"] * 3)
        out = frame.minima.generate("prompt", backend=backend, schema=Verdict, details=True,
                                    progress=False)
        error = out.loc["c", "error"]
        assert error.startswith("SchemaMismatch: ") and "not JSON" in error
        assert pd.isna(out.loc["c", "label"]) and pd.isna(out.loc["c", "text"])
        assert out.loc[["a", "b"], "cached"].all()  # the valid rows came from the cache
        assert len(_cache_texts(tmp_path / "cache")) == 2  # the refused row was never stored
    finally:
        close_backend(backend)


def test_schema_is_part_of_the_cache_key(srv, backend, frame):
    frame.minima.generate("prompt", backend=backend, progress=False)
    typed = frame.minima.generate("prompt", backend=backend, schema=Verdict, details=True,
                                  progress=False)
    assert not typed["cached"].any()  # the plain answers were not reused for typed ones
    again = frame.minima.generate("prompt", backend=backend, schema=Verdict, details=True,
                                  progress=False)
    assert again["cached"].all()
    other = frame.minima.generate("prompt", backend=backend, schema=VERDICT_DICT, details=True,
                                  progress=False)
    assert not other["cached"].any()


def test_prompt_mode_puts_the_schema_in_the_system_message_and_reads_prose(srv, backend, frame):
    out = frame.minima.generate("prompt", backend=backend, schema=Verdict, schema_mode="prompt",
                                system="You are a strict grader.", details=True, progress=False)
    sent = srv.last_request_json
    assert "response_format" not in sent
    system = sent["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("You are a strict grader.")
    assert "JSON schema" in system["content"] and '"evidence"' in system["content"]
    assert out["text"].str.startswith("Sure, here is the JSON").all()  # prose and a fence
    assert out["label"].notna().all() and str(out["votes"].dtype) == "Int64"


@pytest.mark.parametrize("text", [
    '{"a": 1}',
    'Here you go:\n```json\n{"a": 1}\n```',
    '```\n{"a": 1}\n```\nHope this helps!',
    'The answer is {"a": 1} as requested.',
    'Thinking {not json} ... final: {"a": 1}',
])
def test_tolerant_extraction(text):
    assert extract_json(text) == {"a": 1}


def test_no_json_at_all_says_so():
    with pytest.raises(ValueError, match="no JSON object found"):
        extract_json("I cannot answer that.")


def test_sweep_with_schema_has_typed_columns_per_combination(srv, backend, frame):
    runs = frame.minima.sweep("prompt", backend=backend, schema=Verdict,
                              model=["mock-model", "mock-model-large"], progress=False)
    assert len(runs) == 6
    assert list(runs.columns[:3]) == ["row", "model", "label"]
    assert str(runs["votes"].dtype) == "Int64" and runs["label"].notna().all()
    assert runs["error"].isna().all()


def test_series_accessor_takes_a_schema(srv, backend, frame):
    out = frame["prompt"].minima.generate(backend=backend, schema=VERDICT_DICT, progress=False)
    assert list(out.columns) == ["label", "score", "tags", "meta"]


def test_bad_schemas_say_how_to_fix_them():
    with pytest.raises(ConfigError, match="pydantic model class or a JSON-schema dict"):
        AnswerSchema(str)
    with pytest.raises(ConfigError, match="JSON object with properties"):
        AnswerSchema({"type": "array", "items": {"type": "string"}})
    with pytest.raises(ConfigError, match="schema_mode"):
        AnswerSchema(Verdict, "xml")
    with pytest.raises(ConfigError, match="not both"):
        AnswerSchema(Verdict).merged_extra({"response_format": {"type": "json_object"}})


def test_the_mock_answers_valid_json_for_the_schema_deterministically(srv, backend, frame):
    a = frame.minima.generate("prompt", backend=backend, schema=VERDICT_DICT, details=True,
                              progress=False, force_refresh=True)
    b = frame.minima.generate("prompt", backend=backend, schema=VERDICT_DICT, details=True,
                              progress=False, force_refresh=True)
    assert a["text"].tolist() == b["text"].tolist()  # a seed does not change the JSON


def test_a_dict_schema_never_imports_pydantic():
    import subprocess
    import sys

    code = ("import sys, minima_nb.notebook.schema as s\n"
            "a = s.AnswerSchema({'type': 'object', 'properties': {'x': {'type': 'integer'}}})\n"
            "assert a.parse('{\"x\": 1}') == {'x': 1}\n"
            "print('pydantic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
