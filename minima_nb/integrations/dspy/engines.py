"""The engine pair handed to ``dspy.LM(model, engine=..., async_engine=...)``: DSPy calls on minima_nb.

DSPy 3.4's supported extension point is an engine: ``complete(lm15.Request) -> lm15.Response``
(plain on the sync engine, a coroutine on the async one). These engines turn the canonical
request into a :class:`MinimaLlmRequest`, answer it with the backend (cache, pacing, retries,
cooldown, failure types) and turn the answer back. Both run the backend on minima_nb's own loop
thread: the async engine awaits it there (directly when DSPy already runs on that loop, as
``df.minima.predict`` does), the sync engine blocks on it, so a sync call needs no event loop of
its own and works in a script, a Jupyter cell and ``Module.batch`` / ``dspy.Parallel`` threads.
A sync call *from* the loop thread would wait for itself forever; it raises instead.

Per-call controls are read in the calling thread or task when DSPy calls ``complete``:
``minima_nb.set_force_refresh`` / ``set_retry_seed`` (task-local ContextVars) and the
``dspy.context(force_refresh=..., retry_seed=...)`` overrides, which DSPy copies into its worker
threads where a plain ContextVar does not reach.

A cache hit answers with an empty ``Usage()``, so ``dspy.track_usage()`` counts billed tokens only;
``response.provider_data["minima"]`` (also in ``lm.history``) says whether the answer was cached.
"""

from __future__ import annotations

import asyncio
import itertools
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy import lm15

from ...controls import (
    get_force_refresh,
    get_retry_seed,
    reset_retry_seed,
    set_last_cached,
    set_retry_seed,
)
from ...engine.loop import background_loop, in_background_loop
from ...engine.sync import run_sync
from ...types import MinimaLlmFailure, MinimaLlmRequest, MinimaLlmResponse, MinimaLlmResult
from .errors import PROVIDER, lm_error

__all__ = ["SUPPORTED_PARAMS", "SYNC_ON_LOOP", "CallLog", "MinimaAsyncEngine", "MinimaEngine",
           "current_log", "to_minima_request"]

# What DSPy may put in a request for these engines: every one has an OpenAI wire field.
SUPPORTED_PARAMS = frozenset({
    "temperature", "max_tokens", "top_p", "stop", "seed", "frequency_penalty", "presence_penalty",
    "response_format",
})
SYNC_ON_LOOP = (
    "a synchronous DSPy call (program(...), lm(...)) was made on minima_nb's own event-loop thread, "
    "where it would wait for itself forever; inside async code run by minima_nb use "
    "`await program.acall(...)` instead"
)
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_call", "function_call": "tool_call",
           "content_filter": "content_filter"}
_ids = itertools.count(1)


@dataclass
class CallLog:
    """What the LM calls of one unit of work cost: ``df.minima.predict`` keeps one per row."""

    calls: int = 0
    cached: int = 0
    attempts: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    failures: list[MinimaLlmFailure] = field(default_factory=list)

    def add(self, result: MinimaLlmResult) -> None:
        self.calls += 1
        self.attempts += result.attempts
        if isinstance(result, MinimaLlmFailure):
            self.failures.append(result)
            return
        if result.cached:
            self.cached += 1
            return
        if result.input_tokens is not None:
            self.input_tokens = (self.input_tokens or 0) + result.input_tokens
        if result.output_tokens is not None:
            self.output_tokens = (self.output_tokens or 0) + result.output_tokens


#: The log the calls of the current task (or thread) are counted into, if any.
current_log: ContextVar[CallLog | None] = ContextVar("minima_nb_dspy_call_log", default=None)


@dataclass(frozen=True)
class _Controls:
    """The caller's per-call controls, read where DSPy called us and carried to the loop."""

    force_refresh: bool
    retry_seed: int
    log: CallLog | None


def _read_controls() -> _Controls:
    settings = dspy.settings
    force = get_force_refresh() or bool(settings.get("force_refresh", False))
    seed = get_retry_seed() or int(settings.get("retry_seed", 0) or 0)
    return _Controls(force, seed, current_log.get())


def _unsupported(what: str, feature: str) -> Exception:
    return dspy.LMUnsupportedFeatureError(
        f"{what} is not supported by minima_nb's DSPy LM (text chat completions only)",
        provider=PROVIDER, features=[feature],
    )


def _text_of(parts: Any, where: str) -> str:
    if isinstance(parts, str):
        return parts
    texts = [getattr(p, "text", None) for p in parts]
    if not all(isinstance(p, lm15.TextPart) for p in parts):
        raise _unsupported(f"a non-text part in the {where}", "multimodal")
    return "\n".join(t for t in texts if t is not None)


def _wire_response_format(value: Any) -> Any:
    # lm15's canonical json_schema shape is flat; the OpenAI wire nests it under "json_schema".
    if isinstance(value, dict) and value.get("type") == "json_schema" and "schema" in value:
        inner = {"name": value.get("name") or "response", "schema": value["schema"]}
        if value.get("strict") is not None:
            inner["strict"] = value["strict"]
        return {"type": "json_schema", "json_schema": inner}
    return value


def to_minima_request(request: Any, default_model: str) -> MinimaLlmRequest:
    """The :class:`MinimaLlmRequest` for a canonical ``lm15.Request`` (text chat only)."""
    if request.tools:
        raise _unsupported("tool calling", "tools")
    messages: list[dict[str, Any]] = []
    if request.system is not None:
        messages.append({"role": "system", "content": _text_of(request.system, "system prompt")})
    for message in request.messages:
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": _text_of(message.parts, f"{role} message")})
    config = request.config
    for name in ("tool_choice", "reasoning", "cache", "logprobs", "top_k"):
        if getattr(config, name, None) is not None:
            raise _unsupported(f"the {name!r} setting", name)
    extra: dict[str, Any] = {}
    for name in ("top_p", "seed", "frequency_penalty", "presence_penalty", "service_tier", "user_id",
                 "store"):
        value = getattr(config, name, None)
        if value is not None:
            extra["user" if name == "user_id" else name] = value
    if config.stop:
        extra["stop"] = list(config.stop)
    if config.response_format is not None:
        extra["response_format"] = _wire_response_format(config.response_format)
    if config.extensions:
        extra.update(config.extensions)
    return MinimaLlmRequest(
        request_id=f"dspy-{next(_ids)}",
        messages=messages,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        model=None if request.model == default_model else request.model,
        extra=extra or None,
    )


async def _generate(backend: Any, request: MinimaLlmRequest, controls: _Controls) -> MinimaLlmResult:
    # The backend reads the retry seed from its task's context; set it only for this call.
    token = set_retry_seed(controls.retry_seed) if controls.retry_seed != get_retry_seed() else None
    try:
        result: MinimaLlmResult = await backend.generate(request, force_refresh=controls.force_refresh)
        return result
    finally:
        if token is not None:
            reset_retry_seed(token)


def _response(result: MinimaLlmResult, controls: _Controls, model: str) -> Any:
    """The lm15 Response for an answer (a failure raises its DSPy error), counted on the way."""
    if controls.log is not None:
        controls.log.add(result)
    if isinstance(result, MinimaLlmFailure):
        raise lm_error(result, model)
    if not isinstance(result, MinimaLlmResponse):  # a backend returning something else is a bug
        raise TypeError(f"backend.generate returned {type(result).__name__}, not a MinimaLlmResponse")
    set_last_cached(result.cached)
    usage = lm15.Usage() if result.cached else lm15.Usage(
        input_tokens=result.input_tokens, output_tokens=result.output_tokens)
    minima = {"cached": result.cached, "attempts": result.attempts, "latency_s": result.latency_s,
              "model": result.model}
    return lm15.Response(
        id=None, model=result.model or model, message=lm15.Message.assistant(result.text),
        finish_reason=_FINISH.get(result.finish_reason or "stop", "stop"), usage=usage,
        provider_data={"minima": minima},
    )


class _Base:
    """What both engines declare to DSPy (read from the engine object) and hold."""

    supported_params = SUPPORTED_PARAMS
    supports_response_schema = True
    supports_function_calling = False
    supports_reasoning = False

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def _model(self) -> str:
        return str(self.backend.config.model)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend!r})"


class MinimaEngine(_Base):
    """The sync engine: blocks the calling thread on minima_nb's loop (never from the loop itself)."""

    def complete(self, request: Any) -> Any:
        controls = _read_controls()
        if in_background_loop():
            raise RuntimeError(SYNC_ON_LOOP)
        call = to_minima_request(request, self._model())
        return _response(run_sync(_generate(self.backend, call, controls)), controls, request.model)

    def close(self) -> None:
        """Nothing to close: the backend belongs to the caller."""


class MinimaAsyncEngine(_Base):
    """The async engine: awaits the backend on minima_nb's loop, hopping there from any other loop."""

    async def complete(self, request: Any) -> Any:
        controls = _read_controls()
        call = to_minima_request(request, self._model())
        work = _generate(self.backend, call, controls)
        if in_background_loop():
            result = await work
        else:
            result = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, background_loop()))
        return _response(result, controls, request.model)

    async def aclose(self) -> None:
        """Nothing to close: the backend belongs to the caller."""
