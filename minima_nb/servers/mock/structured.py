"""The mock's structured answers: deterministic JSON that matches the schema a request asks for.

A request asks for a schema in one of two ways, and the mock honours both:

- ``response_format={"type": "json_schema", "json_schema": {"schema": ...}}`` (OpenAI's
  structured outputs): the answer is the bare JSON document;
- a system message holding the schema in a fenced ``json`` block after the words "JSON schema"
  (``schema_mode="prompt"`` for servers without ``response_format``): the answer wraps the JSON
  in a line of prose and a code fence, as chat models often do, so the client's tolerant
  extraction is exercised for real.

Values are derived from the prompt (never random), so the same request gets the same answer.
The scripted faults ``invalid-json`` (not JSON at all) and ``wrong-json`` (JSON that misses the
schema) let a test make the first answers unusable and watch the client ask again.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

__all__ = ["BAD_JSON", "requested_schema", "structured_text"]

#: Scripted answers that a schema check must refuse: fault kind -> the text answered.
BAD_JSON = {
    "invalid-json": '{"this is": "not closed", ',
    "wrong-json": '{"unexpected": ["a field", "the schema", "does not have"]}',
}

_FENCED_SCHEMA = re.compile(r"JSON schema.*?```(?:json)?\s*\n(.*?)\n```", re.DOTALL | re.IGNORECASE)


def requested_schema(body: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """(the schema the request asks for, whether it was asked in the prompt) or (None, False)."""
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return (schema if isinstance(schema, dict) else {}), False
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if isinstance(message, dict) and message.get("role") == "system":
            content = message.get("content")
            match = _FENCED_SCHEMA.search(content) if isinstance(content, str) else None
            if match:
                try:
                    schema = json.loads(match.group(1))
                except ValueError:
                    return None, False
                return (schema if isinstance(schema, dict) else None), True
    return None, False


def structured_text(body: dict[str, Any], prompt: str) -> str | None:
    """The answer's text when the request asks for a schema (JSON valid for it), else None."""
    schema, in_prompt = requested_schema(body)
    if schema is None:
        return None
    document = json.dumps(_example(schema, schema, prompt, "$"), ensure_ascii=False)
    if in_prompt:
        return f"Sure, here is the JSON you asked for:\n```json\n{document}\n```"
    return document


def _pick(prompt: str, path: str, count: int) -> int:
    return zlib.crc32(f"{path}\0{prompt}".encode()) % count


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    while isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        schema = target if isinstance(target, dict) else {}
        ref = schema.get("$ref")
    return schema


def _example(schema: Any, root: dict[str, Any], prompt: str, path: str) -> Any:
    """A value valid for ``schema`` (the subset pydantic and hand-written schemas use)."""
    if not isinstance(schema, dict):
        return prompt
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][_pick(prompt, path, len(schema["enum"]))]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            usable = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return _example((usable or options)[0], root, prompt, path)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        return {name: _example(sub, root, prompt, f"{path}.{name}") for name, sub in properties.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        return [_example(schema.get("items", {}), root, prompt, f"{path}[{i}]") for i in range(count)]
    if kind == "integer":
        return _clip(len(prompt) % 10, schema)
    if kind == "number":
        return float(_clip(len(prompt) % 10 + 0.5, schema))
    if kind == "boolean":
        return _pick(prompt, path, 2) == 1
    if kind == "null":
        return None
    return _string(schema, prompt)


def _clip(value: float, schema: dict[str, Any]) -> Any:
    low, high = schema.get("minimum"), schema.get("maximum")
    if isinstance(low, (int, float)):
        value = max(value, low)
    if isinstance(high, (int, float)):
        value = min(value, high)
    return value


def _string(schema: dict[str, Any], prompt: str) -> str:
    kind = schema.get("format")
    if kind == "date":
        return "2024-01-01"
    if kind == "date-time":
        return "2024-01-01T00:00:00Z"
    text = f"about {prompt[:40]}".strip()
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and len(text) < low:
        text = text.ljust(low, ".")
    if isinstance(high, int):
        text = text[:high]
    return text
