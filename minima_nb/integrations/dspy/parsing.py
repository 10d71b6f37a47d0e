"""``TolerantChatAdapter``: DSPy's ChatAdapter with a parser for what models really write.

Only ``parse`` is overridden; formatting (and so every prompt and cache key) is DSPy's own. It is
never configured globally: pass it where wanted, ``dspy.context(adapter=TolerantChatAdapter())``
or ``dspy.configure(adapter=...)``. What it accepts beyond the stock parser:

- field headers with or without inner spaces, in any case, anywhere in a line, several per line
  (``Sure! [[## Answer ##]] 4``); when a field appears twice the **last** value wins, as in
  minima-llm (a model that corrects itself writes the correction last);
- ``""``, ``none`` and ``null`` mean "no value": the field's default, None for an Optional
  field, else a missing field;
- int and float fields take the first number (``Score: 4/5`` -> 4.0, ``3 items`` -> 3);
- list fields take JSON or Python lists and markdown bullets (``- a`` / ``* a`` / ``1. a``);
- Literal fields match case-insensitively (``Yes`` for ``Literal["yes", "no"]``);
- everything else goes through DSPy's own typing (``parse_value``), so bool, Literal, dict and
  pydantic fields come back typed.

A required field that is still missing raises ``dspy.AdapterParseError`` naming it. DSPy's
ChatAdapter would then re-ask through the JSONAdapter, a second paid call on every parse failure;
that fallback is off here unless ``TolerantChatAdapter(use_json_adapter_fallback=True)``.
"""

from __future__ import annotations

import ast
import json
import re
import types
import typing
from typing import Any, Literal, get_args, get_origin

import dspy
from dspy.adapters.utils import apply_output_field_defaults, parse_value

__all__ = ["TolerantChatAdapter"]

_HEADER = re.compile(r"\[\[\s*##\s*([A-Za-z_][\w ]*?)\s*##\s*\]\]")
_ABSENT = {"", "none", "null"}
_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_INT = re.compile(r"[-+]?\d+")
_BULLET = re.compile(r"^\s*(?:[-*+\u2022]|\d+[.)])\s+(.*\S)\s*$")
_MISSING: Any = object()


def _unwrap_optional(annotation: Any) -> Any:
    """``T`` for ``Optional[T]`` / ``T | None``; the annotation itself otherwise."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        kept = [a for a in get_args(annotation) if a is not type(None)]
        if len(kept) == 1:
            return kept[0]
    return annotation


def _sections(completion: str) -> dict[str, str]:
    """Header name (lower case, spaces as ``_``) -> its text; the last non-empty occurrence wins."""
    found: dict[str, str] = {}
    matches = list(_HEADER.finditer(completion))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(completion)
        value = completion[match.end():end].strip()
        name = re.sub(r"\s+", "_", match.group(1).strip()).lower()
        if value.lower() not in _ABSENT or name not in found:
            found[name] = value
    return found


def _number(value: str, kind: type) -> int | float:
    match = (_INT if kind is int else _FLOAT).search(value)
    if match is None:
        raise ValueError(f"no number in {value[:60]!r}")
    return int(match.group()) if kind is int else float(match.group())


def _literal(value: str, annotation: Any) -> Any:
    cleaned = value.strip().strip("`'\"").rstrip(".").strip()
    for option in get_args(annotation):
        if isinstance(option, str) and option.lower() == cleaned.lower():
            return option
    return parse_value(value, annotation)  # DSPy's own rules (numbers, quoted forms) or its error


_UNESCAPED_QUOTE = r"(?<!\\)'"


def _bullets(value: str) -> list[str] | None:
    lines = [line for line in value.splitlines() if line.strip()]
    items = [m.group(1) for m in map(_BULLET.match, lines) if m]
    return items if lines and len(items) == len(lines) else None


def _list(value: str, annotation: Any) -> Any:
    text = value.strip()
    if not text.startswith("["):
        items = _bullets(text)
        if items is not None:
            return parse_value(json.dumps(items), annotation)
    if text.startswith("[") and not text[1:].lstrip().startswith('"') and len(re.findall(_UNESCAPED_QUOTE, text)) % 2:
        # An apostrophe inside a single-quoted item: any reading of it would be a guess.
        raise ValueError(f"Unbalanced single quotes, likely an apostrophe; use JSON format: {text[:100]}")
    try:
        return parse_value(text, annotation)
    except ValueError:
        if text.startswith("["):  # a Python list DSPy's JSON repair read otherwise
            return parse_value(json.dumps(ast.literal_eval(text)), annotation)
        raise


def _typed(value: str, annotation: Any) -> Any:
    """``value`` as ``annotation``, or ``_MISSING`` when it says "no value"."""
    if value.strip().lower() in _ABSENT:
        return _MISSING
    inner = _unwrap_optional(annotation)
    if inner is str:
        return value
    if inner in (int, float):
        return _number(value, inner)
    if get_origin(inner) is Literal:
        return _literal(value, inner)
    if inner is list or get_origin(inner) is list:
        return _list(value, inner)
    return parse_value(value, annotation)


AdapterParseError = dspy.AdapterParseError  # what parse raises; minima-llm exported it from its adapter


class TolerantChatAdapter(dspy.ChatAdapter):
    """A ``dspy.ChatAdapter`` whose ``parse`` accepts what models really write (module docstring).

    ``use_json_adapter_fallback`` defaults to False: a parse failure raises
    ``dspy.AdapterParseError`` (which ``run_dspy_batch`` retries with a forced refresh) instead of
    a second LM call through the JSONAdapter.
    """

    def __init__(self, *args: Any, use_json_adapter_fallback: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, use_json_adapter_fallback=use_json_adapter_fallback, **kwargs)
        self._system_messages: dict[Any, str] = {}

    def format_system_message(self, signature: Any) -> str:
        """DSPy's system message, made once per signature (it depends on nothing else, and it is
        most of the cost of formatting a row)."""
        message = self._system_messages.get(signature)
        if message is None:
            if len(self._system_messages) >= 256:  # signatures made on the fly: stay bounded
                self._system_messages.clear()
            message = self._system_messages[signature] = super().format_system_message(signature)
        return message

    @classmethod
    def is_list_str(cls, annotation: Any) -> bool:
        """Whether ``annotation`` is ``list[str]`` (``List[str]``, or either made Optional)."""
        inner = _unwrap_optional(annotation)
        return get_origin(inner) is list and get_args(inner) == (str,)

    @classmethod
    def try_parse_list_str(cls, value: str) -> list[str]:
        """A JSON or Python list of strings from ``value`` (blank items dropped); ValueError otherwise.

        minima-llm's helper: an unbalanced single-quoted list (an apostrophe inside an item) is
        refused with a hint to use JSON, rather than read wrongly.
        """
        text = value.strip()
        if text.startswith("[") and not text[1:].lstrip().startswith('"') and "'" in text:
            if len(re.findall(_UNESCAPED_QUOTE, text)) % 2:
                raise ValueError(f"Unbalanced single quotes ({len(re.findall(_UNESCAPED_QUOTE, text))}), "
                                 f"likely an apostrophe; use JSON format: {text[:100]}")
            try:
                items = ast.literal_eval(text)
            except (ValueError, SyntaxError) as exc:
                raise ValueError(f"invalid Python list ({exc}); use JSON: {text[:100]}") from None
        else:
            try:
                items = json.loads(text)
            except ValueError:
                raise ValueError(f"Expected JSON array, got: {text[:100]}") from None
        if not isinstance(items, list):
            raise ValueError(f"Expected JSON array, got: {text[:100]}")
        return [str(item).strip() for item in items if item]

    def parse(self, signature: Any, completion: str) -> dict[str, Any]:
        """The typed output fields of ``signature`` found in ``completion``."""
        by_name = {name.lower(): name for name in signature.output_fields}
        fields: dict[str, Any] = {}
        for header, value in _sections(completion).items():
            name = by_name.get(header)
            if name is None:
                continue
            try:
                typed = _typed(value, signature.output_fields[name].annotation)
            except (ValueError, SyntaxError, TypeError) as exc:
                raise dspy.AdapterParseError(
                    adapter_name="TolerantChatAdapter", signature=signature, lm_response=completion,
                    message=f"field {name!r}: cannot read {value[:80]!r}: {exc}", parsed_result=fields,
                ) from None
            if typed is not _MISSING:
                fields[name] = typed
        fields = apply_output_field_defaults(signature, fields)
        missing = [name for name in signature.output_fields if name not in fields]
        if missing:
            raise dspy.AdapterParseError(
                adapter_name="TolerantChatAdapter", signature=signature, lm_response=completion,
                message=f"Missing required field: {', '.join(missing)}", parsed_result=fields,
            )
        return fields
