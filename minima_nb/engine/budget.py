"""The spend cap: stop taking new rows before the billed usage would pass a limit.

``generate(..., max_cost=5.0, price={...})`` (or ``max_tokens_total=``) sets a
:class:`SpendCap` around its batch (:func:`capped`). Before a worker takes its next row, the
pool asks :meth:`SpendCap.refusal`: the usage billed so far (the tokens of every answer
received, refused schema answers included) plus what the rows already taken but unanswered will
cost, plus this row, must stay within the cap. A row's cost is the mean of the rows answered so
far (all their calls and re-asks), or the caller's first guess before the first answer. Once refused, no new row is taken; the
batch ends with :class:`~minima_nb.errors.BudgetExceeded`, with every answered row in it and
in the cache. At most one wave of requests (those in flight) is past the check.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ..errors import ConfigError
from .meter import BatchMeter

T = TypeVar("T")
PER_MILLION = 1_000_000


def prices(price: Mapping[str, float] | None) -> tuple[float, float]:
    """(input, output) price per million tokens from ``{"input": ..., "output": ...}``."""
    if price is None:
        raise ConfigError("max_cost= needs price={'input': ..., 'output': ...} (per million "
                          "tokens, from your provider's price page; none is shipped).")
    unknown = sorted(set(price) - {"input", "output"})
    if unknown or not isinstance(price, Mapping):
        raise ConfigError(f"price= takes the keys 'input' and 'output' (per million tokens), "
                          f"not {unknown}")
    values = (float(price.get("input", 0.0)), float(price.get("output", 0.0)))
    if min(values) < 0:
        raise ConfigError("price= values are per million tokens and must be >= 0")
    return values


@dataclass(frozen=True)
class SpendCap:
    """A cost and/or token cap for one batch, with the first guess of one request's usage."""

    max_cost: float | None = None
    max_tokens_total: int | None = None
    price_in: float = 0.0
    price_out: float = 0.0
    guess_in: float = 0.0
    guess_out: float = 0.0

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        """The cost of that many tokens at this cap's prices."""
        return (input_tokens * self.price_in + output_tokens * self.price_out) / PER_MILLION

    def less(self, input_tokens: int, output_tokens: int) -> SpendCap:
        """This cap with that usage already spent (a later round of the same call)."""
        return replace(
            self,
            max_cost=None if self.max_cost is None else self.max_cost - self.cost(input_tokens, output_tokens),
            max_tokens_total=None if self.max_tokens_total is None else
            self.max_tokens_total - input_tokens - output_tokens)

    def spent(self, input_tokens: int, output_tokens: int) -> str:
        """Spend so far against the cap, for the progress display."""
        if self.max_cost is not None:
            return f"spent ${self.cost(input_tokens, output_tokens):,.4f} of ${self.max_cost:,.2f}"
        return f"tokens {input_tokens + output_tokens:,} of {self.max_tokens_total or 0:,}"

    def refusal(self, meter: BatchMeter, pending_rows: int, billed_rows: int = 0) -> str | None:
        """Why the next row must not be taken (None: take it); ``pending_rows`` are taken, unanswered.

        A row's usage is the mean over the ``billed_rows`` answered so far (a row of a DSPy
        module may make several calls, and a re-asked schema answer bills twice), else over
        the answers received (a row still running), else the caller's guess.
        """
        answers = billed_rows or meter.latency_n
        per_in = meter.input_tokens / answers if answers else self.guess_in
        per_out = meter.output_tokens / answers if answers else self.guess_out
        coming = pending_rows + 1
        if self.max_cost is not None:
            spent = self.cost(meter.input_tokens, meter.output_tokens)
            if spent + coming * self.cost(per_in, per_out) > self.max_cost:
                return (f"stopped at the spend cap: ${spent:,.4f} billed so far, and the next "
                        f"rows would pass max_cost=${self.max_cost:,.2f}; raise max_cost and "
                        "run the same call again to continue (answered rows are cached)")
        if self.max_tokens_total is not None:
            used = meter.input_tokens + meter.output_tokens
            if used + coming * (per_in + per_out) > self.max_tokens_total:
                return (f"stopped at the token cap: {used:,} tokens billed so far, and the next "
                        f"rows would pass max_tokens_total={self.max_tokens_total:,}; raise it "
                        "and run the same call again to continue (answered rows are cached)")
        return None


current_cap: ContextVar[SpendCap | None] = ContextVar("minima_nb_spend_cap", default=None)


async def capped(cap: SpendCap | None, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` with ``cap`` set for the batch pools it starts."""
    token = current_cap.set(cap)
    try:
        return await work
    finally:
        current_cap.reset(token)
