"""Prompts to chat messages: a column of strings or message lists, or a ``{field}`` template.

The accessor turns each row into one "slot": the row's chat messages, or ``None`` when the row
has no prompt (NaN, None, an empty or blank string, an empty list), which is then not sent.
Errors name the column, the row label and the fix, before anything is sent.
"""

from __future__ import annotations

import re
import string
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

Messages = list[dict[str, Any]]



def is_missing(value: Any) -> bool:
    """True for a row with no prompt: NaN/None, a blank string, an empty list."""
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple, np.ndarray)):
        return len(value) == 0
    return pd.api.types.is_scalar(value) and bool(pd.isna(value))


def _user_messages(text: str, system: str | None) -> Messages:
    messages = [{"role": "user", "content": text}]
    return messages if system is None else [{"role": "system", "content": system}, *messages]


def _checked_messages(value: Any, where: str, system: str | None) -> Messages:
    messages = []
    for i, message in enumerate(value.tolist() if isinstance(value, np.ndarray) else value):
        if not isinstance(message, Mapping):
            raise TypeError(f"{where}: message {i} must be a dict with 'role' and 'content', "
                            f"not {type(message).__name__}")
        if "role" not in message:
            raise ValueError(f"{where}: message {i} has no 'role' (got {dict(message)!r:.80})")
        messages.append(dict(message))
    if system is not None and messages[0].get("role") != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def column_slots(
    values: Sequence[Any], index: pd.Index, column: Hashable, system: str | None
) -> list[Messages | None]:
    """Messages per row from a column of strings or message lists."""
    if system is None and set(map(type, values)) == {str} and all(map(str.strip, values)):
        # The usual column, all non-blank strings: one user message each, with no check per row.
        return [[{"role": "user", "content": value}] for value in values]
    slots: list[Messages | None] = []
    append = slots.append
    for label, value in zip(index, values, strict=True):
        if type(value) is str and value.strip():  # the usual row, first (a large column is long)
            append([{"role": "user", "content": value}] if system is None else _user_messages(value, system))
        elif is_missing(value):
            append(None)
        elif isinstance(value, str):
            append(_user_messages(value, system))
        elif isinstance(value, (list, tuple, np.ndarray)):
            append(_checked_messages(value, _where(column, label), system))
        else:
            raise TypeError(f"{_where(column, label)}: a prompt must be a string or a list of chat messages "
                            f"({{'role': ..., 'content': ...}} dicts), not {type(value).__name__}")
    return slots


def _where(column: Hashable, label: Hashable) -> str:
    return f"column {column!r}, row {label!r}"


def _template_fields(template: str) -> list[str]:
    """The column names a ``str.format`` template refers to, in order of first use."""
    fields: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"prompt template {template!r} is malformed ({exc}); "
                         "write {{ and }} for literal braces") from None
    for _, field, _, _ in parsed:
        if field is None:
            continue
        root = re.split(r"[.\[]", field, maxsplit=1)[0]  # the name before any .attr or [key]
        if not root or root.isdigit():
            raise ValueError(f"prompt template {template!r} has a positional field {{{field}}}; "
                             "put a column name inside the braces, e.g. {question}")
        if root not in fields:
            fields.append(root)
    return fields


def _single_column(frame: pd.DataFrame, label: Hashable) -> pd.Series:
    column = frame[label]
    if isinstance(column, pd.DataFrame):
        raise ValueError(f"{label!r} names {column.shape[1]} columns; make the column names unique")
    return column


def _template_slots(
    frame: pd.DataFrame, template: str, fields: list[str], system: str | None
) -> list[Messages | None]:
    """Messages per row from a template; a row whose field is missing gets no prompt."""
    unknown = [f for f in fields if f not in frame.columns]
    if unknown:
        raise KeyError(f"prompt template field {{{unknown[0]}}} is not a column; "
                       f"available columns: {list(frame.columns)}")
    values = {f: _single_column(frame, f).tolist() for f in fields}
    slots: list[Messages | None] = []
    for position, label in enumerate(frame.index):
        row = {f: values[f][position] for f in fields}
        if any(is_missing(v) for v in row.values()):
            slots.append(None)
            continue
        try:
            text = template.format_map(row)
        except KeyError as exc:
            raise KeyError(f"prompt template field {exc} is not a column; "
                           f"available columns: {list(frame.columns)}") from None
        except (ValueError, TypeError, AttributeError, IndexError) as exc:
            raise type(exc)(f"prompt template {template!r} fails on row {label!r}: {exc}") from None
        slots.append(None if is_missing(text) else _user_messages(text, system))
    return slots


def check_system(system: Any) -> str | None:
    """``system`` itself, after checking it is a string or None."""
    if system is not None and not isinstance(system, str):
        raise TypeError(f"system must be a string, not {type(system).__name__}")
    return system


def frame_slots(
    frame: pd.DataFrame, prompt: Any, system: str | None
) -> tuple[list[Messages | None], Hashable | None]:
    """(messages per row, the result's default name) for a column name or a template."""
    system = check_system(system)
    try:
        is_column = prompt in frame.columns
    except TypeError:  # unhashable
        is_column = False
    if is_column:
        column = _single_column(frame, prompt)
        return column_slots(column.tolist(), frame.index, prompt, system), prompt
    fields = _template_fields(prompt) if isinstance(prompt, str) else []
    if fields:
        return _template_slots(frame, prompt, fields, system), None
    raise KeyError(
        f"{prompt!r} is not a column (available columns: {list(frame.columns)}) and not a template. "
        "Pass the name of a column of prompts, or a template that names columns in braces, "
        "e.g. 'Translate to French: {text}'."
    )
