"""A small JSON-schema validator: the subset that structured outputs and pydantic schemas use.

``schema=`` given as a dict is checked here, so typed answers need no extra dependency: types,
``properties``/``required``/``additionalProperties``, ``items``/``minItems``/``maxItems``,
``enum``/``const``, ``anyOf``/``oneOf``/``allOf``, local ``$ref`` (``#/$defs/...``), numeric
bounds, string lengths and ``pattern``. Keywords outside the subset are ignored, as a
validator must for unknown keywords. :func:`problem` returns the first violation as one line
naming where it is (``$.scores[1]: expected integer, got "high"``), or None.
"""

from __future__ import annotations

import json
import re
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "number": (int, float), "null": (type(None),),
}


def _is(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False  # JSON has no 1 == true
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(kind, (object,)))


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    seen = 0
    while isinstance(ref, str) and ref.startswith("#") and seen < 32:
        target: Any = root
        for part in filter(None, ref[1:].split("/")):
            target = target.get(part) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            return {}
        schema, ref, seen = target, target.get("$ref"), seen + 1
    return schema


def problem(value: Any, schema: Any, root: Any = None, where: str = "$") -> str | None:
    """The first way ``value`` breaks ``schema``, or None when it is valid."""
    if schema is True or not isinstance(schema, dict):
        return None
    root = schema if root is None else root
    schema = _resolve(schema, root)
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if isinstance(kind, str) else []
    if kinds and not any(_is(value, k) for k in kinds):
        return f"{where}: expected {' or '.join(kinds)}, got {_show(value)}"
    if "const" in schema and value != schema["const"]:
        return f"{where}: expected {_show(schema['const'])}, got {_show(value)}"
    if isinstance(schema.get("enum"), list) and value not in schema["enum"]:
        return f"{where}: {_show(value)} is not one of {_show(schema['enum'])}"
    for sub in schema.get("allOf") or []:
        found = problem(value, sub, root, where)
        if found:
            return found
    for combinator in ("anyOf", "oneOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            reasons = [problem(value, o, root, where) for o in options]
            if all(reasons):
                return reasons[0]
    return _object(value, schema, root, where) or _array(value, schema, root, where) or _scalar(
        value, schema, where)


def _object(value: Any, schema: dict[str, Any], root: Any, where: str) -> str | None:
    if not isinstance(value, dict):
        return None
    for name in schema.get("required") or []:
        if name not in value:
            return f"{where}: missing required field {name!r}"
    properties = schema.get("properties") or {}
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            found = problem(item, properties[name], root, f"{where}.{name}")
        elif extra is False:
            found = f"{where}: unexpected field {name!r}"
        else:
            found = problem(item, extra, root, f"{where}.{name}")
        if found:
            return found
    return None


def _array(value: Any, schema: dict[str, Any], root: Any, where: str) -> str | None:
    if not isinstance(value, list):
        return None
    low, high = schema.get("minItems"), schema.get("maxItems")
    if isinstance(low, int) and len(value) < low:
        return f"{where}: {len(value)} item(s), at least {low} expected"
    if isinstance(high, int) and len(value) > high:
        return f"{where}: {len(value)} item(s), at most {high} expected"
    items = schema.get("items")
    for i, item in enumerate(value):
        found = problem(item, items, root, f"{where}[{i}]")
        if found:
            return found
    return None


def _scalar(value: Any, schema: dict[str, Any], where: str) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for key, bad in (("minimum", lambda v, b: v < b), ("maximum", lambda v, b: v > b),
                         ("exclusiveMinimum", lambda v, b: v <= b),
                         ("exclusiveMaximum", lambda v, b: v >= b)):
            bound = schema.get(key)
            if isinstance(bound, (int, float)) and bad(value, bound):
                return f"{where}: {_show(value)} breaks {key}={bound}"
    if isinstance(value, str):
        low, high, pattern = schema.get("minLength"), schema.get("maxLength"), schema.get("pattern")
        if isinstance(low, int) and len(value) < low:
            return f"{where}: shorter than minLength={low}"
        if isinstance(high, int) and len(value) > high:
            return f"{where}: longer than maxLength={high}"
        if isinstance(pattern, str) and re.search(pattern, value) is None:
            return f"{where}: {_show(value)} does not match pattern {pattern!r}"
    return None
