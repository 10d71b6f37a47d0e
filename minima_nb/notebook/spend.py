"""Spend before and during a call: ``df.minima.estimate(...)`` and ``generate(max_cost=...)``.

:func:`estimate` says what a ``generate`` call would cost *before anything is sent*: rows,
distinct prompts, those already cached (``backend.lookup``: a read of the cache, no request),
those to send, their input tokens, the expected output tokens and the cost range at the
user's prices (per million tokens; no price list is shipped, prices change too often).

Input tokens are counted with tiktoken when it is installed *and* its encoding file is already
on disk (it is never downloaded: minima_nb reaches only the endpoint you configured); otherwise
by the rule ``ceil(characters / 4)`` per message, OpenAI's rule of thumb for English text.
Either way each message adds 4 tokens of framing and each request 3 (OpenAI's chat format).
Output tokens: the mean of this model's cached answers (low end) and ``max_tokens`` (high end,
a hard ceiling); with neither, the output part of the cost is unknown and said so.

:func:`spend_cap` turns ``max_cost``/``max_tokens_total`` into the engine's
:class:`~minima_nb.engine.budget.SpendCap`, seeded with the estimate's per-request usage.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .prompts import Messages

__all__ = ["CHARS_PER_TOKEN", "SpendEstimate", "estimate", "spend_cap"]

CHARS_PER_TOKEN = 4
MESSAGE_TOKENS, REQUEST_TOKENS = 4, 3
_ENCODING_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


@dataclass(frozen=True)
class SpendEstimate:
    """What a call would send and cost; printed as a short table."""

    rows: int
    distinct_prompts: int
    cached: int
    to_send: int
    input_tokens: int
    output_tokens: int | None
    output_tokens_max: int | None
    cost_low: float | None
    cost_high: float | None
    tokenizer: str
    output_basis: str

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict (for a DataFrame row or a log)."""
        return asdict(self)

    def __str__(self) -> str:
        def money(value: float | None) -> str:
            return "unknown" if value is None else f"${value:,.4f}"

        out = "?" if self.output_tokens is None else f"{self.output_tokens:,}"
        ceiling = "" if self.output_tokens_max is None else f" (at most {self.output_tokens_max:,})"
        high = money(self.cost_high) if self.cost_high is not None else "? (no max_tokens: no ceiling)"
        cost = "no price given" if self.cost_low is None else f"{money(self.cost_low)} to {high}"
        return "\n".join([
            f"rows {self.rows:,} | distinct prompts {self.distinct_prompts:,} | already cached "
            f"{self.cached:,} | to send {self.to_send:,}",
            f"input tokens ~{self.input_tokens:,} ({self.tokenizer})",
            f"output tokens ~{out}{ceiling} ({self.output_basis})",
            f"cost {cost}",
        ])

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


def _offline_tiktoken(model: str) -> Callable[[str], int] | None:
    """tiktoken's counter for ``model`` if installed and its encoding is on disk, else None."""
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        name = "o200k_base"  # the current OpenAI models' encoding
    cache_dir = (os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
                 or os.path.join(tempfile.gettempdir(), "data-gym-cache"))
    blob = hashlib.sha1(_ENCODING_URL.format(name=name).encode()).hexdigest()
    if not os.path.exists(os.path.join(cache_dir, blob)):
        return None  # loading would download it
    try:
        encoding = tiktoken.get_encoding(name)
    except Exception:  # a corrupt cached file: fall back to the rule
        return None
    return lambda text: len(encoding.encode(text, disallowed_special=()))


def _content(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def prompt_tokens(messages: Messages, count: Callable[[str], int]) -> int:
    """Estimated input tokens of one request."""
    return REQUEST_TOKENS + sum(MESSAGE_TOKENS + count(_content(m)) for m in messages)


def _counter(tokenizer: str, model: str) -> tuple[Callable[[str], int], str]:
    if tokenizer not in ("auto", "tiktoken", "chars"):
        raise ValueError(f"tokenizer={tokenizer!r}: choose 'auto', 'tiktoken' or 'chars'")
    found = None if tokenizer == "chars" else _offline_tiktoken(model)
    if found is None and tokenizer == "tiktoken":
        raise ValueError("tokenizer='tiktoken' needs tiktoken installed with its encoding "
                         "file on disk (TIKTOKEN_CACHE_DIR); minima_nb never downloads it")
    if found is not None:
        return found, "tiktoken"
    return (lambda text: math.ceil(len(text) / CHARS_PER_TOKEN)), f"{CHARS_PER_TOKEN} chars/token"


def _cached_output_mean(backend: Any, model: str) -> float | None:
    cache = getattr(backend, "cache", None)
    if cache is None:
        return None
    total = count = 0
    for chunk in cache.iter_rows(where_sql="model = ? AND output_tokens IS NOT NULL",
                                 params=(model,), include_raw=False):
        total += sum(row.output_tokens for row in chunk)
        count += len(chunk)
    return total / count if count else None


def _identity(messages: Messages, params: Mapping[str, Any]) -> str:
    return json.dumps([params, messages], sort_keys=True, ensure_ascii=False, default=str)


#: One set of request fields and its prompts: (slots, their cache lookup, the request fields).
#: ``generate`` is one group; a sweep is a group per grid combination.
Group = tuple[Sequence["Messages | None"], Sequence[Any], Mapping[str, Any]]


@dataclass
class _Sum:
    """The running totals of :func:`estimate` over its groups."""

    rows: int = 0
    distinct: int = 0
    cached: int = 0
    to_send: int = 0
    input_tokens: int = 0
    output: float | None = 0.0
    output_max: int | None = 0


def estimate(
    backend: Any, groups: Sequence[Group], price: Mapping[str, float] | None,
    tokenizer: str = "auto",
) -> SpendEstimate:
    """The estimate of one call from its groups of prompts and their cache lookup."""
    from ..engine.budget import prices  # engine modules load on first use

    configured = getattr(getattr(backend, "config", None), "model", "") or ""
    total, methods, bases = _Sum(), set(), set()
    means: dict[str, float | None] = {}
    for slots, hits, params in groups:
        model = params.get("model") or configured
        count, method = _counter(tokenizer, model)
        distinct: dict[str, Messages] = {}
        cached: set[str] = set()
        for messages, hit in zip(slots, hits, strict=True):
            if messages is None:
                continue
            total.rows += 1
            ident = _identity(messages, params)
            distinct.setdefault(ident, messages)
            if hit is not None:
                cached.add(ident)
        to_send = [m for ident, m in distinct.items() if ident not in cached]
        total.distinct += len(distinct)
        total.cached += len(cached)
        total.to_send += len(to_send)
        total.input_tokens += sum(prompt_tokens(m, count) for m in to_send)
        if not to_send:
            continue
        methods.add(method)
        max_tokens = params.get("max_tokens")
        if model not in means:
            means[model] = _cached_output_mean(backend, model)
        mean = means[model]
        per_request = mean if mean is not None else max_tokens
        bases.add(f"mean of {model}'s cached answers" if mean is not None else
                  "max_tokens" if max_tokens is not None else
                  "unknown: set max_tokens, or cache some answers")
        total.output = None if per_request is None or total.output is None else (
            total.output + per_request * len(to_send))
        total.output_max = None if max_tokens is None or total.output_max is None else (
            total.output_max + max_tokens * len(to_send))
    output = None if total.output is None else round(total.output)
    output_max = total.output_max
    low = high = None
    if price is not None:
        p_in, p_out = prices(price)
        low = (total.input_tokens * p_in + (output or 0) * p_out) / 1e6
        high = None if output_max is None else (total.input_tokens * p_in + output_max * p_out) / 1e6
    if not methods:  # nothing to send: name the rule that would have counted
        methods.add(_counter(tokenizer, configured)[1])
    return SpendEstimate(
        rows=total.rows, distinct_prompts=total.distinct, cached=total.cached,
        to_send=total.to_send, input_tokens=total.input_tokens, output_tokens=output,
        output_tokens_max=output_max, cost_low=low, cost_high=high,
        tokenizer=" + ".join(sorted(methods)),
        output_basis="; ".join(sorted(bases)) or "nothing to send")


def attach_cap(job: Any, backend: Any, max_cost: float | None, max_tokens_total: int | None,
               price: Mapping[str, float] | None, force_refresh: bool) -> None:
    """Give ``job`` the spend cap of ``max_cost``/``max_tokens_total`` (nothing when both None)."""
    if max_cost is None and max_tokens_total is None:
        return
    from .session import get_backend

    backend = get_backend() if backend is None else backend
    hits = job.lookup(backend, force_refresh, text_only=True)
    guess = estimate(backend, job.spend_groups(hits), price if max_cost is not None else None)
    job.cap = spend_cap(guess, max_cost, max_tokens_total, price)


def spend_cap(
    guess: SpendEstimate | None, max_cost: float | None, max_tokens_total: int | None,
    price: Mapping[str, float] | None,
) -> Any:
    """The engine's spend cap for a call, its first per-request guess taken from ``guess``.

    Without a guess (a program whose prompts are known only by running it) the first wave of
    rows is taken before the cap knows a row's usage; from the first answer on it does."""
    from ..engine.budget import SpendCap, prices

    p_in, p_out = prices(price) if max_cost is not None or price is not None else (0.0, 0.0)
    if guess is None:
        return SpendCap(max_cost=max_cost, max_tokens_total=max_tokens_total, price_in=p_in,
                        price_out=p_out)
    sending = max(guess.to_send, 1)
    per_out = (guess.output_tokens_max if guess.output_tokens_max is not None
               else guess.output_tokens or 0) / sending
    return SpendCap(max_cost=max_cost, max_tokens_total=max_tokens_total, price_in=p_in,
                    price_out=p_out, guess_in=guess.input_tokens / sending, guess_out=per_out)
