"""Typed results: a call's answers read through its schema into one column per field.

The job hands over one result per slot (a cached row, a response, a failure, or None); each
answer's text is parsed and validated by the :class:`~.schema.AnswerSchema`. An answer that
does not validate here (only possible for answers that skipped the engine's check: a backend
without it) becomes ``<NA>`` with the reason in ``error``, like a row the engine gave up on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from ..errors import ConfigError
from .schema import AnswerSchema

__all__ = ["typed_details", "typed_result"]

MISMATCH = "SchemaMismatch"


def _parsed(
    schema: AnswerSchema, results: Sequence[Any], text_of: Callable[[Any], str | None]
) -> tuple[list[dict[str, Any] | None], list[str | None]]:
    """Per result: its validated fields (or None), and why it did not validate (or None)."""
    values: list[dict[str, Any] | None] = []
    problems: list[str | None] = []
    for result in results:
        text = text_of(result)
        if text is None:
            values.append(None)
            problems.append(None)
            continue
        try:
            values.append(schema.parse(text))
            problems.append(None)
        except ValueError as exc:
            values.append(None)
            problems.append(f"{MISMATCH}: {exc}")
    return values, problems


def typed_details(
    schema: AnswerSchema, results: Sequence[Any], text_of: Callable[[Any], str | None],
    info: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the typed columns, the details columns with the schema's errors) aligned to ``info``."""
    clash = sorted(set(schema.fields) & set(info.columns))
    if clash:
        raise ConfigError(f"schema fields {clash} clash with the details=True columns; rename "
                          "them in the schema, or call without details=True.")
    values, problems = _parsed(schema, results, text_of)
    if any(problems):
        errors = info["error"].astype(object).tolist()
        info = info.assign(error=pd.array(
            [p if p is not None else e for p, e in zip(problems, errors, strict=True)],
            dtype="string"))
    return schema.frame(values, info.index), info


def typed_result(
    schema: AnswerSchema, results: Sequence[Any], text_of: Callable[[Any], str | None],
    info: pd.DataFrame | None, index: pd.Index, warning: str | None,
) -> tuple[pd.DataFrame, str | None]:
    """``generate``'s typed frame: the fields, then (with details) the details columns."""
    if info is not None:
        typed, info = typed_details(schema, results, text_of, info)
        return pd.concat([typed, info], axis=1), None
    values, problems = _parsed(schema, results, text_of)
    mismatched = sum(p is not None for p in problems)
    if mismatched:
        first = next(p for p in problems if p is not None)
        note = (f"minima: {mismatched:,} answers did not match the schema and are <NA> "
                f"(first: {first}). Use details=True to see each row's reason.")
        warning = f"{warning} {note}" if warning else note
    return schema.frame(values, index), warning
