"""TolerantChatAdapter.parse: what models really write, one case per row of the table.

Each case is (name, output field annotation, completion, expected value or the AdapterParseError
it must raise). The signature has one output field ``answer`` unless a case says otherwise.
"""

from __future__ import annotations

from typing import Literal, Optional

import dspy
import pydantic
import pytest
from _dspy_support import QA, Judge, loopback_only
from _mock_backend import close_backend, make_backend

from minima_nb.dspy_adapter import MinimaLlmDSPyLM, TolerantChatAdapter
from minima_nb.testing import MockServer

RAISES = object()


class Point(pydantic.BaseModel):
    x: int
    y: int


CASES = [
    # headers
    ("well-formed", str, "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]", "4"),
    ("no inner spaces", str, "[[## answer ##]]\n4", "4"),
    ("capitalised", str, "[[ ## Answer ## ]]\n4", "4"),
    ("upper case", str, "[[ ## ANSWER ## ]] 4", "4"),
    ("mid-line after a preamble", str, "Sure! [[ ## answer ## ]] 4", "4"),
    ("leading spaces (stock slices wrongly)", str, "   [[ ## answer ## ]]   4", "4"),
    ("multi-line value", str, "[[ ## answer ## ]]\nline one\nline two\n[[ ## completed ## ]]",
     "line one\nline two"),
    ("last occurrence wins", str, "[[ ## answer ## ]] 4\n[[ ## answer ## ]] 5", "5"),
    ("a later empty one does not erase", str, "[[ ## answer ## ]] 4\n[[ ## answer ## ]]", "4"),
    ("unknown headers ignored", str, "[[ ## notes ## ]] x\n[[ ## answer ## ]] 4", "4"),
    # absent values
    ("null for str | None", str | None, "[[ ## answer ## ]] null", None),
    ("None for str | None", str | None, "[[ ## answer ## ]] None", None),
    ("missing float | None", float | None, "[[ ## completed ## ]]", None),
    ("none for Optional[float]", Optional[float], "[[ ## answer ## ]] none", None),  # noqa: UP045
    ("empty required str", str, "[[ ## answer ## ]]\n\n[[ ## completed ## ]]", RAISES),
    ("missing required field", str, "just some text", RAISES),
    # numbers
    ("float from a fraction", float, "[[ ## answer ## ]] Score: 4/5", 4.0),
    ("float out of", float, "[[ ## answer ## ]] 4.5 out of 5", 4.5),
    ("negative float", float, "[[ ## answer ## ]] -0.25", -0.25),
    ("int with a unit", int, "[[ ## answer ## ]] 3 items", 3),
    ("int from 3.", int, "[[ ## answer ## ]] 3.", 3),
    ("no number for a float", float, "[[ ## answer ## ]] high", RAISES),
    # lists
    ("JSON list", list[str], '[[ ## answer ## ]] ["a", "b"]', ["a", "b"]),
    ("Python list", list[str], "[[ ## answer ## ]] ['a', 'b']", ["a", "b"]),
    ("markdown bullets", list[str], "[[ ## answer ## ]]\n- a\n- b", ["a", "b"]),
    ("star and numbered bullets", list[str], "[[ ## answer ## ]]\n* a\n2. b", ["a", "b"]),
    ("bullets typed as ints", list[int], "[[ ## answer ## ]]\n- 1\n- 2", [1, 2]),
    # DSPy's own typing, after the tolerant steps
    ("Literal case-insensitive", Literal["yes", "no"], "[[ ## answer ## ]] Yes", "yes"),
    ("Literal with a full stop", Literal["yes", "no"], "[[ ## answer ## ]] no.", "no"),
    ("Literal outside the options", Literal["yes", "no"], "[[ ## answer ## ]] maybe", RAISES),
    ("bool False", bool, "[[ ## answer ## ]] False", False),
    ("bool true", bool, "[[ ## answer ## ]] true", True),
    ("dict", dict, '[[ ## answer ## ]] {"a": 1}', {"a": 1}),
    ("pydantic model", Point, '[[ ## answer ## ]] {"x": 1, "y": 2}', Point(x=1, y=2)),
]


def _signature(annotation) -> type[dspy.Signature]:
    return dspy.Signature({"question": (str, dspy.InputField()), "answer": (annotation, dspy.OutputField())})


@pytest.mark.parametrize(("annotation", "completion", "expected"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_parse_case(annotation, completion, expected):
    """One row of the table: the typed value, or AdapterParseError naming the field."""
    signature = _signature(annotation)
    if expected is RAISES:
        with pytest.raises(dspy.AdapterParseError, match="answer"):
            TolerantChatAdapter().parse(signature, completion)
    else:
        assert TolerantChatAdapter().parse(signature, completion) == {"answer": expected}


def test_several_headers_on_one_line_and_field_types_together():
    """Two fields on one line, each typed: a Literal verdict and a float score."""
    parsed = TolerantChatAdapter().parse(Judge, "[[## Verdict ##]] Correct [[## score ##]] 4/5")
    assert parsed == {"verdict": "correct", "score": 4.0}


def test_a_field_with_a_default_may_be_missing():
    """A missing field with a default takes it (DSPy's apply_output_field_defaults)."""
    signature = dspy.Signature({"question": (str, dspy.InputField()),
                                "answer": (str, dspy.OutputField()),
                                "note": (str, dspy.OutputField(default="n/a"))})
    assert TolerantChatAdapter().parse(signature, "[[ ## answer ## ]] 4") == {"answer": "4", "note": "n/a"}


def test_json_fallback_is_off_by_default_and_a_switch():
    """No second call through JSONAdapter unless asked for."""
    assert TolerantChatAdapter().use_json_adapter_fallback is False
    assert TolerantChatAdapter(use_json_adapter_fallback=True).use_json_adapter_fallback is True
    assert isinstance(TolerantChatAdapter(), dspy.ChatAdapter)


def test_importing_the_adapter_configures_nothing():
    """Importing minima_nb.dspy_adapter leaves DSPy's global adapter alone."""
    assert dspy.settings.adapter is None or not isinstance(dspy.settings.adapter, TolerantChatAdapter)


@pytest.mark.parametrize("variant", ["exact", "sloppy"])
def test_end_to_end_the_mock_answers_each_variant_and_the_tolerant_adapter_reads_it(tmp_path, variant):
    """The mock's well-formed and sloppy DSPy replies both parse, typed, through a real call."""
    with loopback_only(), MockServer(dspy_replies=variant) as srv:
        backend = make_backend(srv, tmp_path / "cache")
        try:
            with dspy.context(lm=MinimaLlmDSPyLM(backend), adapter=TolerantChatAdapter()):
                judged = dspy.Predict(Judge)(question="What is 2+2?", answer="4")
                answered = dspy.Predict(QA)(question="What is 2+2?")
        finally:
            close_backend(backend)
    assert judged.verdict in ("correct", "incorrect") and judged.score in (1.0, 2.0, 3.0, 4.0, 5.0)
    assert answered.answer == "4"


def test_end_to_end_stock_chat_adapter_fails_on_sloppy_replies(tmp_path):
    """The same sloppy reply defeats DSPy's own ChatAdapter (with its JSON fallback off)."""
    with loopback_only(), MockServer(dspy_replies="sloppy") as srv:
        backend = make_backend(srv, tmp_path / "cache")
        try:
            with dspy.context(lm=MinimaLlmDSPyLM(backend),
                              adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
                with pytest.raises(dspy.AdapterParseError):
                    dspy.Predict(Judge)(question="What is 2+2?", answer="4")
        finally:
            close_backend(backend)


@pytest.mark.parametrize(("text", "expected"), [
    ('["a", "b", ""]', ["a", "b"]),
    ("  ['x', 'y']  ", ["x", "y"]),
    ('["it\'s fine"]', ["it's fine"]),
])
def test_try_parse_list_str_reads_json_and_python_lists(text, expected):
    """minima-llm's TolerantChatAdapter.try_parse_list_str, kept: JSON or Python list syntax."""
    assert TolerantChatAdapter.try_parse_list_str(text) == expected


@pytest.mark.parametrize("text", ["['it's broken']", "not a list", '{"a": 1}', '"a string"'])
def test_try_parse_list_str_refuses_what_is_not_a_clean_list(text):
    with pytest.raises(ValueError):
        TolerantChatAdapter.try_parse_list_str(text)


def test_is_list_str_recognises_list_of_str_and_its_optional():
    from typing import List, Optional  # noqa: UP035  (the spellings minima-llm users write)

    assert TolerantChatAdapter.is_list_str(list[str]) and TolerantChatAdapter.is_list_str(List[str])  # noqa: UP006
    assert TolerantChatAdapter.is_list_str(Optional[list[str]]) and TolerantChatAdapter.is_list_str(list[str] | None)  # noqa: UP045
    assert not any(TolerantChatAdapter.is_list_str(a) for a in (str, list[int], Optional[str], list))  # noqa: UP045
