"""The proxy's wire: an OpenAI chat-completions body in, a :class:`MinimaLlmRequest` out, and an
answer (or failure) back as OpenAI JSON, Server-Sent Events or an OpenAI-shaped error.

The request side decides the cache key, so it follows one rule: a field joins the request (and
so the key) only if it changes what the upstream answers. ``stream``, ``stream_options``,
``user``, ``metadata`` and the proxy's own ``cache`` control only say how the answer is delivered
or who asked; they stay out (and are not forwarded). ``max_tokens`` and ``max_completion_tokens``
are one setting (DSPy sends the second, openai-python users the first), ``n: 1`` is the default
and ``null`` means "not given", so a request through the proxy has exactly the key of the same
request made with ``df.minima.generate``.

Nothing here sees an API key; :func:`scrub` removes one from text the proxy did not write.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...types import MinimaLlmFailure, MinimaLlmRequest, MinimaLlmResponse

__all__ = ["ChatCall", "ProxyRequestError", "chat_call", "completion_body", "encode_json",
           "error_body", "failure_status", "no_cache_requested", "scrub", "sse_body"]

# Body fields that say how to deliver the answer or who asked, not what to answer.
DELIVERY_FIELDS = frozenset({"stream", "stream_options", "user", "metadata", "cache"})
_REQUEST_FIELDS = frozenset({"model", "messages", "temperature", "max_tokens",
                             "max_completion_tokens", "n"})
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                429: "rate_limit_error"}
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class ProxyRequestError(Exception):
    """A request the proxy refuses before anything is sent; answered with ``status``."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


@dataclass(frozen=True)
class ChatCall:
    """One chat request as the proxy runs it: what to ask, and how to deliver the answer."""

    request: MinimaLlmRequest
    stream: bool = False
    include_usage: bool = False
    no_cache: bool = False


def chat_call(body: Any, request_id: str, *, default_model: str, force_model: bool,
              cache_control: str | None = None) -> ChatCall:
    """Read a chat-completions body (already JSON-decoded); raise ProxyRequestError if unusable.

    ``cache_control`` is the client's ``Cache-Control`` header: ``no-cache`` forces a refresh,
    as does ``{"cache": {"no-cache": true}}`` in the body (minima-llm's and LiteLLM's spelling).
    """
    if not isinstance(body, dict):
        raise ProxyRequestError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    messages = _messages(body.get("messages"))
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise ProxyRequestError(400, "model must be a non-empty string", param="model")
    n = body.get("n")
    if n is not None and (type(n) is not int or n != 1):
        raise ProxyRequestError(400, f"n={n!r} is not supported: this proxy answers one choice "
                                "per request; send n=1 (or leave it out) and repeat the request "
                                "with different seeds for several answers", param="n")
    extra = {k: v for k, v in body.items()
             if k not in _REQUEST_FIELDS and k not in DELIVERY_FIELDS and v is not None}
    request = MinimaLlmRequest(
        request_id=request_id,
        messages=messages,
        temperature=_temperature(body.get("temperature")),
        max_tokens=_max_tokens(body),
        model=default_model if force_model or model is None else model,
        extra=extra or None,
    )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ProxyRequestError(400, "stream must be true or false", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ProxyRequestError(400, "stream_options must be an object", param="stream_options")
    return ChatCall(
        request=request,
        stream=bool(stream),
        include_usage=bool(stream and options and options.get("include_usage")),
        no_cache=_no_cache(body.get("cache"), cache_control),
    )


def _messages(messages: Any) -> list[Any]:
    if messages is None:
        raise ProxyRequestError(400, "missing 'messages': send a list of {'role': ..., 'content': ...} "
                                "objects", param="messages")
    if not isinstance(messages, list) or not messages:
        raise ProxyRequestError(400, "'messages' must be a non-empty list of {'role': ..., "
                                "'content': ...} objects", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ProxyRequestError(400, f"messages[{i}] must be an object with a string 'role'",
                                    param=f"messages[{i}]")
    return messages


def _temperature(value: Any) -> float | None:
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise ProxyRequestError(400, f"temperature must be a number, not {value!r:.40}", param="temperature")


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    """``max_tokens`` or ``max_completion_tokens`` (one setting); both given must agree."""
    given = {name: body[name] for name in ("max_tokens", "max_completion_tokens")
             if body.get(name) is not None}
    for name, value in given.items():
        if type(value) is not int or value < 1:
            raise ProxyRequestError(400, f"{name} must be a positive integer, not {value!r:.40}",
                                    param=name)
    values = set(given.values())
    if len(values) > 1:
        raise ProxyRequestError(400, "max_tokens and max_completion_tokens differ; they are one "
                                "setting here, send one of them", param="max_tokens")
    return values.pop() if values else None


def _no_cache(cache: Any, cache_control: str | None) -> bool:
    if isinstance(cache, dict) and cache.get("no-cache") is True:
        return True
    return no_cache_requested(cache_control)


def no_cache_requested(cache_control: str | None) -> bool:
    """True when a ``Cache-Control`` header value asks for ``no-cache``."""
    if cache_control:
        return "no-cache" in {part.strip().lower() for part in cache_control.split(",")}
    return False


# -- answers ----------------------------------------------------------------------------------


def completion_body(response: MinimaLlmResponse) -> dict[str, Any]:
    """The chat.completion to send: the upstream's own body (id, model, usage kept) when stored,
    else one rebuilt from the answer (a row stored without its body, by an older writer)."""
    if response.raw is not None and isinstance(response.raw.get("choices"), list):
        return dict(response.raw)
    usage = response.usage
    prompt, completion = usage.input_tokens or 0, usage.output_tokens or 0
    return {
        "id": f"chatcmpl-minima-{response.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": response.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": response.text},
                     "logprobs": None, "finish_reason": response.finish_reason}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
    }


def sse_body(completion: Mapping[str, Any], text: str, include_usage: bool) -> bytes:
    """The whole answer as Server-Sent Events: one chunk with role, content and finish_reason,
    a usage chunk (``choices: []``) when asked for, then ``data: [DONE]``.

    openai-python's iteration and ``.stream()`` helper and LiteLLM accept one content chunk; a
    JSON body to a streaming client would silently yield nothing, so streams always get this.
    """
    head: dict[str, Any] = {"id": completion.get("id"), "object": "chat.completion.chunk",
                            "created": completion.get("created") or int(time.time()),
                            "model": completion.get("model")}
    if completion.get("system_fingerprint") is not None:
        head["system_fingerprint"] = completion["system_fingerprint"]
    choices = completion.get("choices") or [{}]
    first = choices[0] if isinstance(choices[0], dict) else {}
    chunk = {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                                  "logprobs": None, "finish_reason": first.get("finish_reason")}]}
    events = [chunk]
    if include_usage:
        chunk["usage"] = None  # as OpenAI does: every chunk has the field, the last one its value
        events.append({**head, "choices": [], "usage": completion.get("usage")})
    return b"".join(b"data: " + _dumps(e).encode("utf-8") + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def encode_json(payload: Any) -> bytes:
    """Compact UTF-8 JSON for a response body."""
    return _dumps(payload).encode("utf-8")


# -- errors -----------------------------------------------------------------------------------


def error_body(status: int, message: str, *, param: str | None = None,
               code: str | None = None) -> bytes:
    """An OpenAI-shaped error: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return encode_json({"error": {"message": message, "type": kind, "param": param, "code": code}})


def failure_status(failure: MinimaLlmFailure) -> int:
    """The status to answer a failed upstream call with: the upstream's, else 504 for a timeout
    and 502 (bad gateway) for no usable answer at all."""
    if failure.status is not None and 400 <= failure.status <= 599:
        return failure.status
    return 504 if failure.error_type == "RequestTimeout" else 502


def scrub(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` masked (upstream text the proxy passes on)."""
    return text.replace(secret, "[redacted]") if secret and secret in text else text
