"""The direct route of ``df.minima.predict`` for a plain ``dspy.Predict`` or ``dspy.ChainOfThought``.

Through DSPy's LM layer every row costs about 1.5 ms of CPU before and after its request (the
canonical request, history, callbacks, a thread hop per call), more than the request itself.
For the two predictors that make exactly one chat call per row, predict instead asks the
adapter for each row's messages (``adapter.format``, as DSPy would), sends every row as ONE
``backend.run_batched`` (bulk cache reads, identical prompts sent once, the progress of
``generate``) and reads each answer with ``adapter.parse``. The messages and settings are the
ones the LM route would send, so both routes share their cache entries. A row whose answer does
not parse is sent again with a forced refresh and retry seed n, up to ``max_attempts`` tries.

Anything this route cannot reproduce exactly (callbacks, a predictor-level LM, usage tracking,
settings beyond the plain sampling ones, non-text inputs, another adapter class) takes the LM
route instead. The direct route does not add entries to ``lm.history``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.adapters.types.base_type import CUSTOM_TYPE_START_IDENTIFIER as _MARKER

from ...types import MinimaLlmFailure, MinimaLlmRequest, MinimaLlmResponse
from .parsing import TolerantChatAdapter

__all__ = ["DirectPlan", "direct_plan"]

_SAMPLING = frozenset({"temperature", "max_tokens", "top_p", "seed", "stop", "frequency_penalty",
                       "presence_penalty"})
_MESSAGE_CHARS = 400


@dataclass
class DirectPlan:
    """How to turn a row into a request and an answer into output values, for one predictor."""

    adapter: Any
    signature: Any
    demos: list[Any]
    temperature: float | None
    max_tokens: int | None
    extra: dict[str, Any] | None

    template: _Template | None = None
    checked: bool = False

    def request(self, position: int, inputs: Mapping[str, Any]) -> MinimaLlmRequest | None:
        """The row's request, or None when its messages are not plain text (the LM route then)."""
        messages = self.template.fill(inputs) if self.template is not None else None
        if messages is None:
            messages = self.adapter.format(self.signature, self.demos, dict(inputs))
            if not all(isinstance(m.get("content"), str) for m in messages):
                return None
            if not self.checked:
                self.checked = True
                self.template = _Template.make(self, inputs, messages)
        return MinimaLlmRequest(request_id=f"row-{position}", messages=messages,
                                temperature=self.temperature, max_tokens=self.max_tokens, extra=self.extra)

    def outputs(self, answer: Any) -> Any:
        """The parsed output fields of ``answer``, or a failure (``AdapterParseError`` if unreadable)."""
        if not isinstance(answer, MinimaLlmResponse):
            return answer  # a MinimaLlmFailure (or None: a row that never ran)
        try:
            parsed: dict[str, Any] = self.adapter.parse(self.signature, answer.text)
        except dspy.AdapterParseError as exc:
            text = " ".join(str(exc).split())[:_MESSAGE_CHARS]
            return MinimaLlmFailure(answer.request_id, "AdapterParseError", text, attempts=answer.attempts,
                                    model=answer.model)
        return parsed


class _Template:
    """A row's messages with its text inputs left as holes, made by DSPy's own ``format``.

    DSPy formats a text value as the text itself, but spends most of a row's formatting time
    finding that out (a pydantic ``TypeAdapter`` per value). The template is DSPy's output for
    placeholder values, split at the placeholders; a row whose values are all text fills it in.
    It is only used once it gave exactly DSPy's messages for a real row.
    """

    def __init__(self, head: list[dict[str, Any]], names: list[str], parts: list[str]) -> None:
        self.head, self.names, self.parts = head, names, parts

    @classmethod
    def make(cls, plan: DirectPlan, inputs: Mapping[str, Any], expected: list[dict[str, Any]]) -> _Template | None:
        names = list(inputs)
        holes = {name: f"\x00minima-hole-{i}\x00" for i, name in enumerate(names)}
        messages = plan.adapter.format(plan.signature, plan.demos, holes)
        last = messages[-1].get("content") if messages else None
        if not isinstance(last, str) or any(last.count(h) != 1 for h in holes.values()):
            return None
        order = sorted(names, key=lambda name: last.index(holes[name]))
        parts, rest = [], last
        for name in order:
            before, rest = rest.split(holes[name], 1)
            parts.append(before)
        parts.append(rest)
        template = cls([dict(m) for m in messages[:-1]], order, parts)
        return template if template.fill(inputs) == expected else None

    def fill(self, inputs: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        texts = [v for v in (inputs.get(name) for name in self.names) if type(v) is str and _MARKER not in v]
        if len(texts) != len(self.names) or len(inputs) != len(self.names):
            return None
        pieces = [self.parts[0]]
        for text, part in zip(texts, self.parts[1:], strict=True):
            pieces += (text, part)
        return [*self.head, {"role": "user", "content": "".join(pieces)}]


def _no_callbacks(*owners: Any) -> bool:
    return not any(getattr(owner, "callbacks", None) for owner in owners) and not dspy.settings.callbacks


def direct_plan(program: Any, adapter: Any, lm: Any, fields: Sequence[str]) -> DirectPlan | None:
    """A plan for ``program`` when the direct route reproduces its LM route exactly, else None."""
    if type(program) is dspy.ChainOfThought:
        predictor = program.predict
    elif type(program) is dspy.Predict:
        predictor = program
    else:
        return None
    if type(predictor) is not dspy.Predict or predictor.lm is not None:
        return None
    if not (type(adapter) is dspy.ChatAdapter or isinstance(adapter, TolerantChatAdapter)):
        return None
    if getattr(adapter, "use_native_function_calling", False) or dspy.settings.usage_tracker is not None:
        return None
    if not _no_callbacks(program, predictor, lm, adapter):
        return None
    signature = predictor.signature
    if set(fields) != set(signature.input_fields):
        return None
    config = {k: v for k, v in {**lm.kwargs, **predictor.config}.items() if v is not None}
    if not set(config) <= _SAMPLING:
        return None
    extra = {k: (list(v) if k == "stop" and isinstance(v, (list, tuple)) else v)
             for k, v in config.items() if k not in ("temperature", "max_tokens")}
    return DirectPlan(adapter, signature, list(predictor.demos), config.get("temperature"),
                      config.get("max_tokens"), extra or None)
