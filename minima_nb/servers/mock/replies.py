"""What the mock server says: deterministic answers, OpenAI-shaped errors, rate-limit headers.

``testing.MockServer`` owns the sockets, the scripted and random faults and the rate window;
this module owns the replies themselves, so their wording and headers can be read (and tested)
in one place: the error body per HTTP status, the fault kinds a test may script, the answer a
prompt gets (a few known facts, DSPy's chat format when the prompt asks for it, else an echo),
the crude token count and OpenAI's duration format for the reset headers.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from .structured import BAD_JSON, structured_text

__all__ = [
    "BAD_JSON", "DSPY_REPLIES", "ERRORS", "ERRORS_429", "FAULT_KINDS", "KNOWN_ANSWERS", "MALFORMED_BODY",
    "MOCK_MODELS", "RATE_LIMITED", "TOKEN_LIMIT", "answer_text", "check_dspy_variant", "check_kinds",
    "content_text", "count_tokens", "drop_connection", "dspy_answer", "echo_credentials", "error_response", "handle_models", "json_response",
    "last_user_text", "mock_answer", "openai_duration", "ratelimit_headers", "truncate",
]

MOCK_MODELS = ("mock-model", "mock-model-large")
TOKEN_LIMIT = 10_000_000  # the advertised tokens-per-minute limit; never enforced
KNOWN_ANSWERS = {"What is 2+2?": "4", "Capital of France?": "Paris"}

# status -> (message, type, code) of the OpenAI-style error body
ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request", "invalid_request_error", None),
    401: ("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to use this model", "invalid_request_error", "permission_denied"),
    404: ("The model does not exist", "invalid_request_error", "model_not_found"),
    408: ("Request timed out", "timeout", None),
    413: ("Request too large", "invalid_request_error", "request_too_large"),
    422: ("Unprocessable request", "invalid_request_error", None),
    500: ("The server had an error while processing your request", "server_error", None),
    502: ("Bad gateway", "server_error", None),
    503: ("The engine is currently overloaded", "server_error", None),
    504: ("Gateway timeout", "server_error", None),
}
RATE_LIMITED = ("Rate limit reached", "requests", "rate_limit_exceeded")
ERRORS_429 = {"429": RATE_LIMITED, "429-no-retry-after": RATE_LIMITED,
               "quota": ("You exceeded your current quota", "insufficient_quota",
                         "insufficient_quota")}
MALFORMED_BODY = '{"id": "chatcmpl-mock", "object": "chat.completion", "choices": [{'
FAULT_KINDS = frozenset({str(status) for status in ERRORS} | set(ERRORS_429) | set(BAD_JSON)
                        | {"timeout", "drop", "malformed", "null", "empty"})


def content_text(content: Any) -> str:
    """The text of a message content: a string, or the text parts of a multimodal list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def mock_answer(messages: list[dict], model: str) -> str:
    """The deterministic answer the mock gives to ``messages``: a few known facts, else an echo."""
    prompt = last_user_text(messages)
    if prompt in KNOWN_ANSWERS:
        return KNOWN_ANSWERS[prompt]
    return f"[{model}] echo: {prompt[:200]}"


# -- DSPy's chat format ---------------------------------------------------------------------
# DSPy's ChatAdapter ends the user message with "Respond with the corresponding output fields,
# starting with the field `[[ ## a ## ]]`, then `[[ ## b ## ]]` (must be formatted as a valid
# Python float), and then ending with the marker for `[[ ## completed ## ]]`." The mock reads the
# output fields (and their types) from that sentence and answers each one deterministically.
#   exact             every field under its header, as DSPy writes them
#   sloppy            what models really write: a preamble, headers without inner spaces and
#                     capitalised, a field mid-line, "4/5" for a score (TolerantChatAdapter only)
#   missing           the last output field left out (no parser can succeed)
#   missing-unseeded  "missing" unless the request carries a seed (a forced-refresh retry)
DSPY_REPLIES = ("exact", "sloppy", "missing", "missing-unseeded")
_DSPY_ASK = re.compile(r"Respond with the corresponding output fields, starting with the field (.*?), "
                       r"and then ending with the marker for `\[\[ ## completed ## \]\]`", re.S)
_DSPY_FIELD = re.compile(r"`\[\[ ## (\w+) ## \]\]`(?: \(must be formatted as a valid Python ([^)]*)\))?")
_DSPY_INPUT = re.compile(r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## |\n\nRespond with|\Z)", re.S)


def _dspy_value(name: str, kind: str, first_input: str, digest: int) -> str:
    optional = re.fullmatch(r"(?:Optional\[(.*)\]|(.*?) \| None)", kind)
    if optional:
        kind = optional.group(1) or optional.group(2)
    if kind in ("float", "int"):
        score = 1 + digest % 5
        return f"{score}.0" if kind == "float" else str(score)
    if kind == "bool":
        return "True" if digest % 2 == 0 else "False"
    options = re.findall(r"'([^']*)'|\"([^\"]*)\"", kind) if kind.startswith("Literal") else []
    if options:
        values = [a or b for a, b in options]
        return values[digest % len(values)]
    if kind.startswith("list"):
        return json.dumps([f"{name} 1", f"{name} 2"])
    if kind:
        return "{}"
    if name == "reasoning":
        return f"Considering: {first_input[:80]}"
    return KNOWN_ANSWERS.get(first_input.strip(), f"{name} for: {first_input[:80]}")


def dspy_answer(prompt: str, variant: str = "exact", *, seeded: bool = False) -> str | None:
    """DSPy chat-format completion for a prompt that asks for one (else None), in ``variant``."""
    ask = _DSPY_ASK.search(prompt)
    if ask is None:
        return None
    fields = [(name, kind or "") for name, kind in _DSPY_FIELD.findall(ask.group(1))]
    inputs = [value.strip() for name, value in _DSPY_INPUT.findall(prompt[: ask.start()])]
    first_input = inputs[0] if inputs else ""
    digest = zlib.crc32("\n".join(inputs).encode())
    values = [(name, _dspy_value(name, kind, first_input, digest)) for name, kind in fields]
    if variant == "missing-unseeded":
        variant = "exact" if seeded else "missing"
    if variant == "missing":
        values = values[:-1]
    if variant == "sloppy":
        parts = []
        for i, (name, value) in enumerate(values):
            shown = f"{value.split('.')[0]}/5" if fields[i][1] in ("float", "int") else value
            parts.append(f"[[## {name.capitalize()} ##]] {shown}" if i % 2 else f"[[## {name.upper()} ##]]\n{shown}")
        return "Sure! Here is my answer. " + "\n".join(parts) + "\n[[## completed ##]]"
    body = "".join(f"[[ ## {name} ## ]]\n{value}\n\n" for name, value in values)
    return body + "[[ ## completed ## ]]"


def answer_text(body: dict, messages: list[dict], model: str, dspy_variant: str = "exact") -> str:
    """The text of a normal answer: JSON for a requested schema, DSPy's chat format when the
    prompt asks for it (in ``dspy_variant``), else the prompt's answer.

    A seeded request (a forced refresh) says its temperature and seed, so a test sees that a
    refresh really asked again; a schema's JSON stays bare so that it still parses.
    """
    structured = structured_text(body, last_user_text(messages))
    if structured is not None:
        return structured
    text = dspy_answer(last_user_text(messages), dspy_variant, seeded=body.get("seed") is not None)
    if text is None:
        text = mock_answer(messages, model)
    if body.get("seed") is not None:
        text += f" (t={body.get('temperature')}, seed={body['seed']})"
    return text


def count_tokens(text: str) -> int:
    """A crude, deterministic token count: whitespace-separated words (at least 1 if non-empty)."""
    if not text:
        return 0
    return max(1, len(text.split()))


def openai_duration(seconds: float) -> str:
    """Format ``seconds`` the way OpenAI's reset headers do: "20ms", "1s", "1m30s", "6m0s"."""
    if seconds < 1:
        millis = round(max(0.0, seconds) * 1000)
        return f"{millis}ms" if millis else "0s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    secs_text = f"{secs:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{int(hours)}h{int(minutes)}m{secs_text}s"
    if minutes:
        return f"{int(minutes)}m{secs_text}s"
    return f"{secs_text}s"


def json_response(status: int, payload: Any, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(),
                        content_type="application/json", headers=headers)


def error_response(status: int, headers: dict[str, str],
                    error: tuple[str, str, str | None] | None = None) -> web.Response:
    """An OpenAI-style error; ``error`` is (message, type, code), by default per status."""
    message, kind, code = error or ERRORS[status]
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return json_response(status, body, headers)


def ratelimit_headers(rpm: int, remaining: int, reset_s: float) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(rpm),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": openai_duration(reset_s),
        "x-ratelimit-limit-tokens": str(TOKEN_LIMIT),
        "x-ratelimit-remaining-tokens": str(TOKEN_LIMIT),
        "x-ratelimit-reset-tokens": "0s",
    }


def truncate(text: str, max_tokens: Any) -> tuple[str, str]:
    """Cut ``text`` to ``max_tokens`` words; return it with its finish_reason."""
    if isinstance(max_tokens, int) and max_tokens > 0:
        words = text.split()
        if len(words) > max_tokens:
            return " ".join(words[:max_tokens]), "length"
    return text, "stop"


def check_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    kinds = tuple(kinds)
    unknown = sorted(set(kinds) - FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kind(s) {unknown}; known: {sorted(FAULT_KINDS)}")
    return kinds


def echo_credentials(response: web.Response, authorization: str) -> web.Response:
    """The same error with the received Authorization header quoted in its message."""
    body = response.body
    if not isinstance(body, (bytes, bytearray)):  # json_response's bodies are bytes
        raise TypeError(f"expected a JSON error body, not {type(body).__name__}")
    payload = json.loads(body)
    payload["error"]["message"] += f" (request had Authorization: {authorization})"
    dropped = ("content-length", "content-type")  # set again by json_response
    headers = {k: v for k, v in response.headers.items() if k.lower() not in dropped}
    return json_response(response.status, payload, headers)


async def drop_connection(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """Send the headers and part of the promised body, then close the connection."""
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "application/json"
    response.content_length = 4096
    await response.prepare(request)
    await response.write(b'{"id": "chatcmpl-mock-drop", "object": "chat.completion", "cho')
    if request.transport is not None:
        request.transport.close()
    return response


async def handle_models(request: web.Request) -> web.Response:
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "minima-nb"}
            for name in MOCK_MODELS]
    return json_response(200, {"object": "list", "data": data}, {})


def check_dspy_variant(variant: str) -> str:
    if variant not in DSPY_REPLIES:
        raise ValueError(f"unknown dspy_replies {variant!r}; known: {list(DSPY_REPLIES)}")
    return variant
