"""A DataFrame call as a provider batch job: ``df.minima.generate(via="batch")`` and ``submit``.

The rows are the accessor's own (the same requests and cache keys, so a schema's
``response_format`` is in each line exactly as the live path sends it); cached rows are never
sent, and the job's result is shaped by the accessor's own code (typed columns for a schema).

**Schema.** Each answer is checked as it is read from the output file (:mod:`.ingest`): one
that does not validate is not cached and is asked again with a new seed in the next round, up
to ``max_attempts`` answers, then is ``<NA>`` with the validation error.

**Spend caps.** A batch's cost is known only once it ran, and a batch cannot be stopped half
way, so ``max_cost=``/``max_tokens_total=`` are applied *before* anything is submitted: each
distinct uncached prompt's estimated cost (``df.minima.estimate``'s rules, at the ceiling of
``max_tokens``, else the mean of this model's cached answers) is added in row order, and the
prompts after the first one that would pass the cap are not submitted. The result then ends
with ``BudgetExceeded`` saying the estimate, its ``partial`` holding every answered row; when
not even the first prompt fits, nothing is submitted and ``BudgetExceeded`` is raised at once.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any

from ...errors import BudgetExceeded, ConfigError
from .job import BatchJob

__all__ = ["submit_generation"]


def submit_generation(job: Any, backend: Any, *, details: bool, prefix: str | None, on_interrupt: str = "wait",
                      fallback: str = "none", max_cost: float | None = None, max_tokens_total: int | None = None,
                      price: Mapping[str, float] | None = None) -> BatchJob:
    """``job`` (the accessor's ``Generation``) as a ``BatchJob`` whose ``result()`` is generate()'s value."""
    from ...notebook import session

    backend = session.get_backend() if backend is None else backend
    positions = [p for p, messages in enumerate(job.slots) if messages is not None]
    refused = None
    if max_cost is not None or max_tokens_total is not None:
        positions, refused = _within_cap(job, backend, positions, max_cost, max_tokens_total, price)
    blank: list[Any] = [None] * len(job.slots)

    def shape(results: list[Any]) -> Any:
        if refused is not None:
            exc = BudgetExceeded(refused, list(results))
            exc.partial = job._shape(results, positions, blank, True)[0]
            raise exc
        value, warning = job._shape(results, positions, blank, details)
        if warning:
            warnings.warn(warning, UserWarning, stacklevel=3)
        return value

    schema = job.schema
    spec = None if schema is None else {"schema": schema.json_schema, "mode": schema.mode}
    return BatchJob.submit(backend, job._requests(positions), prefix=prefix, shaper=shape,
                           on_interrupt=on_interrupt, fallback=fallback,
                           check=None if schema is None else schema.check, answer_schema=spec)


def _within_cap(job: Any, backend: Any, positions: list[int], max_cost: float | None,
                max_tokens_total: int | None, price: Mapping[str, float] | None) -> tuple[list[int], str | None]:
    """The positions whose prompts fit under the cap (cached ones always do), and the refusal
    message when some do not (None when all fit)."""
    from ...engine.budget import prices
    from ...notebook.spend import estimate, prompt_tokens, token_counter

    hits = job.lookup(backend, False, text_only=True)
    guess = estimate(backend, job.spend_groups(hits), price if max_cost is not None else None)
    per_out = (job.params.get("max_tokens") if job.params.get("max_tokens") is not None
               else None if guess.output_tokens is None else guess.output_tokens / max(guess.to_send, 1))
    if per_out is None:
        raise ConfigError("a batch cannot be stopped once submitted, so a cap needs each row's output "
                          "bounded up front: pass max_tokens= (or cache some answers of this model first)")
    p_in, p_out = prices(price) if max_cost is not None else (0.0, 0.0)
    count, _ = token_counter("auto", job.params.get("model") or backend.config.model)
    fits: dict[str, bool] = {}
    cost = tokens = 0.0
    full = False
    for p in positions:
        if hits[p] is not None:
            continue
        ident = json.dumps(job.slots[p], sort_keys=True, ensure_ascii=False, default=str)
        if ident in fits:
            continue
        row_in = prompt_tokens(job.slots[p], count)
        row_cost, row_tokens = (row_in * p_in + per_out * p_out) / 1e6, row_in + per_out
        full = full or (max_cost is not None and cost + row_cost > max_cost) or (
            max_tokens_total is not None and tokens + row_tokens > max_tokens_total)
        fits[ident] = not full
        if not full:
            cost, tokens = cost + row_cost, tokens + row_tokens
    taken = sum(fits.values())
    if taken == len(fits):
        return positions, None
    kept = [p for p in positions if hits[p] is not None or fits[json.dumps(job.slots[p], sort_keys=True,
                                                                           ensure_ascii=False, default=str)]]
    cap = " and ".join(part for part in (
        None if max_cost is None else f"max_cost={_money(max_cost)}",
        None if max_tokens_total is None else f"max_tokens_total={max_tokens_total:,}") if part)
    money = "" if guess.cost_high is None and guess.cost_low is None else (
        f", estimated {_money(guess.cost_low or 0)} to {'?' if guess.cost_high is None else _money(guess.cost_high)}")
    head = (f"the batch would pass {cap}: {guess.to_send:,} prompts to send, ~{guess.input_tokens:,} input "
            f"and up to ~{round(per_out * guess.to_send):,} output tokens{money}. A batch cannot be stopped once "
            "submitted, so ")
    if taken == 0:
        exc = BudgetExceeded(head + "nothing was submitted: not even the first prompt fits. Raise the cap "
                             "(or lower max_tokens).", [])
        exc.partial = job._shape([], [], job.lookup(backend, False, text_only=False), True)[0]
        raise exc
    return kept, head + (f"only the first {taken:,} prompts (estimated {_money(cost)}, {round(tokens):,} tokens) "
                         f"were submitted; the other {len(fits) - taken:,} ({len(positions) - len(kept):,} rows) "
                         "were not. Raise the cap and run it again: the answered rows are cached.")


def _money(value: float) -> str:
    """Dollars, with the digits a small batch needs (``$0.000021``)."""
    return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:.8f}".rstrip("0")
