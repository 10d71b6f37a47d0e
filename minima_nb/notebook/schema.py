"""Typed answers: ``df.minima.generate("prompt", schema=Verdict)``.

A :class:`AnswerSchema` is made from a pydantic model class or a JSON-schema dict. It owns:

- what the request asks for: ``response_format`` of type ``json_schema`` (``strict`` when the
  schema allows OpenAI's strict mode: every property required, no open objects, no keyword
  strict mode refuses), which is part of ``extra`` and so of the cache key; or, with
  ``schema_mode="prompt"`` for servers without ``response_format``, the schema in the system
  message (so the messages, and the key, carry it);
- how an answer is read: the bare JSON (``"json"`` mode), or tolerantly (``"prompt"`` mode:
  a code fence, leading or trailing prose), then validated: by pydantic for a model, by
  :mod:`.jsoncheck` for a dict;
- the check the engine runs before caching an answer (:meth:`check`), so an answer that does
  not validate is asked again and never stored;
- the typed columns: one per top-level property, ``string``/``Int64``/``Float64``/``boolean``
  for scalars, Python dicts and lists (``object``) for nested objects and arrays.

pydantic is imported only when a pydantic model is given (it is not a dependency).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ..errors import ConfigError
from . import jsoncheck
from .prompts import Messages

__all__ = ["SCHEMA_MODES", "AnswerSchema", "extract_json"]

SCHEMA_MODES = ("json", "prompt")
_SCALAR_DTYPES = {"string": "string", "integer": "Int64", "number": "Float64", "boolean": "boolean"}
# Keywords OpenAI's strict structured outputs refuse; a schema using one is sent with strict=false.
_NOT_STRICT = frozenset({"default", "oneOf", "allOf", "not", "if", "then", "else",
                         "patternProperties", "dependentRequired", "dependentSchemas",
                         "minProperties", "maxProperties", "uniqueItems", "contains"})
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
PROMPT_INSTRUCTION = ("Reply with one JSON object that matches this JSON schema, and nothing "
                      "else:\n```json\n{schema}\n```")


def _is_pydantic_model(value: Any) -> bool:
    return isinstance(value, type) and callable(getattr(value, "model_json_schema", None)) and \
        callable(getattr(value, "model_validate", None))


def extract_json(text: str) -> Any:
    """The JSON value in ``text``, found tolerantly; raises ``ValueError`` when there is none.

    Tried in order: the whole text; each fenced code block; then from each ``{`` on, the first
    complete JSON object (prose before or after it is ignored).
    """
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    for block in _FENCE.findall(text):
        try:
            return json.loads(block.strip())
        except ValueError:
            continue
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
            return value
        except ValueError:
            start = text.find("{", start + 1)
    raise ValueError(f"no JSON object found in the answer: {_clip(text)}")


def _clip(text: str, limit: int = 60) -> str:
    line = " ".join(text.split())
    return repr(line if len(line) <= limit else line[: limit - 3] + "...")


def _strict_form(schema: dict[str, Any]) -> dict[str, Any] | None:
    """``schema`` as OpenAI's strict mode wants it (closed objects), or None if it cannot be."""
    result = copy.deepcopy(schema)

    def visit(node: Any) -> bool:
        if isinstance(node, list):
            return all(visit(item) for item in node)
        if not isinstance(node, dict):
            return True
        if _NOT_STRICT & set(node):
            return False
        if node.get("type") == "object" or "properties" in node:
            properties = node.get("properties") or {}
            if set(node.get("required") or []) != set(properties):
                return False
            if node.get("additionalProperties", False) is not False:
                return False
            node["additionalProperties"] = False
        return all(visit(value) for key, value in node.items() if key not in ("enum", "const"))

    return result if visit(result) else None


class AnswerSchema:
    """The schema of one call's answers: what to ask for, how to read and check each answer."""

    def __init__(self, schema: Any, mode: str = "json") -> None:
        if mode not in SCHEMA_MODES:
            raise ConfigError(f"schema_mode={mode!r}: choose 'json' (response_format, the default) "
                              "or 'prompt' (the schema in the system message, for servers "
                              "without response_format).")
        self.mode = mode
        self.model: Any = None
        if _is_pydantic_model(schema):
            self.model = schema
            self.json_schema: dict[str, Any] = schema.model_json_schema()
            name = schema.__name__
        elif isinstance(schema, Mapping):
            self.json_schema = json.loads(json.dumps(schema))  # a plain, JSON-able copy
            name = str(self.json_schema.get("title") or "answer")
        else:
            raise ConfigError(f"schema= must be a pydantic model class or a JSON-schema dict, "
                              f"not {type(schema).__name__}")
        properties = self.json_schema.get("properties")
        if self.json_schema.get("type", "object") != "object" or not isinstance(properties, dict) \
                or not properties:
            raise ConfigError("schema= must describe a JSON object with properties (one column "
                              "per property); wrap a list or a scalar in an object field.")
        self.name = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "answer"
        self.fields = list(properties)

    # -- the request ------------------------------------------------------------------------------

    def extra(self) -> dict[str, Any]:
        """The OpenAI parameters that ask for the schema (``{}`` in prompt mode)."""
        if self.mode == "prompt":
            return {}
        strict = _strict_form(self.json_schema)
        spec = {"name": self.name, "schema": strict if strict is not None else self.json_schema,
                "strict": strict is not None}
        return {"response_format": {"type": "json_schema", "json_schema": spec}}

    def merged_extra(self, extra: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """``extra`` with the schema's parameters; refuses a ``response_format`` of its own."""
        own = self.extra()
        if extra and own and "response_format" in extra:
            raise ConfigError("give either schema= or extra={'response_format': ...}, not both")
        merged = {**(extra or {}), **own}
        return merged or None

    def instruction(self) -> str:
        """The system-message text of prompt mode."""
        return PROMPT_INSTRUCTION.format(schema=json.dumps(self.json_schema, ensure_ascii=False))

    def prompted(self, slots: Sequence[Messages | None]) -> list[Messages | None]:
        """In prompt mode, each slot with the schema in its system message (added if none)."""
        if self.mode != "prompt":
            return list(slots)
        text = self.instruction()
        out: list[Messages | None] = []
        for messages in slots:
            if messages is None:
                out.append(None)
            elif messages and messages[0].get("role") == "system" and isinstance(
                    messages[0].get("content"), str):
                first = {**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}
                out.append([first, *messages[1:]])
            else:
                out.append([{"role": "system", "content": text}, *messages])
        return out

    # -- the answer -------------------------------------------------------------------------------

    def parse(self, text: str) -> dict[str, Any]:
        """The validated answer as plain Python values; ``ValueError`` with the reason if not."""
        if self.mode == "prompt":
            data = extract_json(text)
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"the answer is not JSON ({exc.msg} at char {exc.pos}): "
                                 f"{_clip(text)}") from None
        if self.model is not None:
            from pydantic import ValidationError  # only a pydantic schema gets here

            try:
                value = self.model.model_validate(data)
            except ValidationError as exc:
                details = "; ".join(f"{'.'.join(map(str, e['loc'])) or '$'}: {e['msg']}"
                                    for e in exc.errors()[:3])
                raise ValueError(f"the answer does not match {self.name}: {details}") from None
            dumped: dict[str, Any] = value.model_dump(mode="json")
            return dumped
        found = jsoncheck.problem(data, self.json_schema)
        if found is not None:
            raise ValueError(f"the answer does not match the schema: {found}")
        return dict(data)  # an object: the root schema says so

    def check(self, text: str) -> str | None:
        """The engine's answer check: None when ``text`` validates, else why it does not."""
        try:
            self.parse(text)
        except ValueError as exc:
            return str(exc)
        return None

    # -- the columns ------------------------------------------------------------------------------

    def dtype(self, field: str) -> str:
        """The pandas dtype of ``field``'s column (``object`` for nested values)."""
        node = self._resolve(self.json_schema["properties"][field])
        options = node.get("anyOf") or node.get("oneOf")
        if isinstance(options, list):
            usable = [self._resolve(o) for o in options if o.get("type") != "null"]
            node = usable[0] if len(usable) == 1 else {}
        kind = node.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            kind = kinds[0] if len(kinds) == 1 else None
        if kind is None and isinstance(node.get("enum"), list) and all(
                isinstance(v, str) for v in node["enum"]):
            kind = "string"
        return _SCALAR_DTYPES.get(kind, "object") if isinstance(kind, str) else "object"

    def _resolve(self, node: Any) -> dict[str, Any]:
        return jsoncheck._resolve(node, self.json_schema) if isinstance(node, dict) else {}

    def frame(self, values: Sequence[dict[str, Any] | None], index: pd.Index) -> pd.DataFrame:
        """One typed column per field from the parsed answers (None: a row without one)."""
        data = {}
        for field in self.fields:
            column = [None if v is None else v.get(field) for v in values]
            dtype = self.dtype(field)
            data[field] = pd.array(column, dtype=dtype) if dtype != "object" else pd.Series(
                column, dtype=object, index=index).array
        return pd.DataFrame(data, index=index)
