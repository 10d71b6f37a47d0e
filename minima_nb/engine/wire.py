"""The OpenAI chat-completions wire format: request bodies out, answers in.

Kept apart from the backend so that the batch API, the proxy and the tests build and read
exactly the same JSON. Parsing is strict where it matters: a 2xx whose ``content`` is null or
missing is a :class:`~minima_nb.errors.ResponseError`, never the text ``"None"``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..controls import retry_temperature
from ..errors import ResponseError
from ..types import MinimaLlmRequest


@dataclass(frozen=True)
class ParsedAnswer:
    """The fields of a chat completion the library keeps."""

    text: str
    finish_reason: str | None
    input_tokens: int | None
    output_tokens: int | None
    model: str | None
    raw: dict[str, Any]
    raw_json: str | None = None  # the body as received, when it is plain UTF-8 JSON text


def check_messages(request_id: str, messages: Any) -> None:
    """Raise ``TypeError``/``ValueError`` naming the row when ``messages`` is not a chat message list."""
    if type(messages) is list and messages:
        # The usual shape, checked without the Sequence/Mapping ABC isinstance calls below,
        # which cost more than the rest of a cached row's lookup; anything else is checked fully.
        for msg in messages:
            if type(msg) is not dict or "role" not in msg:
                break
        else:
            return
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(
            f"request {request_id!r}: messages must be a list of {{'role': ..., 'content': ...}} dicts, "
            f"not {type(messages).__name__}"
        )
    if not messages:
        raise ValueError(f"request {request_id!r}: messages is empty; give at least one message")
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or "role" not in msg:
            raise ValueError(
                f"request {request_id!r}: message {i} must be a dict with 'role' and 'content', got {msg!r:.80}"
            )


def build_payload(
    request: MinimaLlmRequest,
    model: str,
    *,
    refresh_round: int | None = None,
    seed_base: int = 0,
    retry_seed: int = 0,
    ramp: tuple[float, float] = (0.5, 5.0),
) -> dict[str, Any]:
    """The JSON body for ``request``; ``refresh_round`` (0, 1, ...) adds the forced-refresh seed and ramp.

    On a forced refresh the body gets a ``seed`` (``retry_seed`` when a retry loop set one,
    else ``seed_base + refresh_round``) and, when the request asked for no temperature (or 0),
    ``retry_temperature(refresh_round + 1, *ramp)``: greedy decoding ignores the seed, so a
    deterministic server would otherwise repeat the very answer being refreshed. The caller's
    own ``seed`` and any explicit non-zero temperature are never overridden; the cache key
    stays that of the request as asked, so a refreshed answer replaces the stored one.
    """
    payload: dict[str, Any] = {"model": model, "messages": list(request.messages)}
    if request.temperature is not None:
        payload["temperature"] = request.temperature
    if request.max_tokens is not None:
        payload["max_tokens"] = request.max_tokens
    if request.extra:
        payload.update(request.extra)
    if refresh_round is not None:
        payload.setdefault("seed", retry_seed if retry_seed > 0 else (seed_base + refresh_round) % 2**31)
        max_temperature, halflife = ramp
        if not payload.get("temperature") and max_temperature > 0:
            payload["temperature"] = round(retry_temperature(refresh_round + 1, max_temperature, halflife), 4)
    return payload


def encode(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as servers expect it."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def parse_answer(body: bytes) -> ParsedAnswer:
    """Read a chat-completion body; raise ResponseError when it holds no usable text."""
    text = _body_text(body)  # decoded once: json.loads would decode the bytes again
    try:
        data = json.loads(body if text is None else text)
    except (ValueError, UnicodeDecodeError):
        raise ResponseError(f"server answered 2xx but the body is not JSON: {_preview(body)}") from None
    return answer_of(data, text, body)


def answer_of(data: Any, raw_json: str | None = None, body: bytes = b"") -> ParsedAnswer:
    """Read an already parsed chat-completion body (a batch output line's ``response.body``)."""
    if not isinstance(data, dict):
        raise ResponseError(f"server answered 2xx with JSON that is not an object: {_shown(body, data)}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ResponseError(f"server answered 2xx without choices: {_shown(body, data)}")
    choice = choices[0]
    raw_message = choice.get("message")
    message: dict[str, Any] = raw_message if isinstance(raw_message, dict) else {}
    text = _content_text(message.get("content"))
    finish_reason = choice.get("finish_reason")
    if text is None:
        raise ResponseError(
            f"server answered 2xx with null content (finish_reason={finish_reason!r}); not cached"
        )
    raw_usage = data.get("usage")
    usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    return ParsedAnswer(
        text=text,
        finish_reason=finish_reason,
        input_tokens=_int_or_none(usage.get("prompt_tokens", usage.get("input_tokens"))),
        output_tokens=_int_or_none(usage.get("completion_tokens", usage.get("output_tokens"))),
        model=data.get("model") if isinstance(data.get("model"), str) else None,
        raw=data,
        raw_json=raw_json,
    )


def _shown(body: bytes, data: Any) -> str:
    return _preview(body or repr(data)[:200].encode())


def _body_text(body: bytes) -> str | None:
    """The body as text, to be stored instead of re-encoding ``raw``; None if it is not plain UTF-8."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if text.startswith("\ufeff") else text  # json.loads(str) refuses a BOM


def _content_text(content: Any) -> str | None:
    """Plain string content, or the text parts of a content-part list joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = [
            text for p in content if isinstance(p, dict) and isinstance(text := p.get("text"), str)
        ]
        return "".join(parts) if parts else None
    return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _preview(body: bytes, limit: int = 120) -> str:
    text = body[:limit].decode("utf-8", "replace")
    return repr(text + ("..." if len(body) > limit else ""))
