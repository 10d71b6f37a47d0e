"""The accessor methods' keyword arguments: request fields, run options, spend options.

``generate``'s arguments split three ways: the request fields (model, temperature, max_tokens,
extra: part of each request and its cache key), the run options (backend, details, progress,
force_refresh) and the spend options (max_cost, price, max_tokens_total, preview).
``series.minima.generate(**options)`` takes them all as keywords, so :func:`split_options`
sorts them and names the unknown ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .schema import AnswerSchema

__all__ = ["SPEND_OPTIONS", "answer_schema", "call_params", "is_grid", "split_options"]


def answer_schema(schema: Any, mode: str) -> AnswerSchema | None:
    """``schema=`` and ``schema_mode=`` as the jobs' :class:`AnswerSchema` (None: untyped)."""
    return None if schema is None else AnswerSchema(schema, mode)


def is_grid(value: Any) -> bool:
    """Whether an estimate() argument is a list of values (a sweep's grid), not one value."""
    return isinstance(value, (list, tuple, range)) or hasattr(value, "__array__")


def call_params(
    model: str | None,
    temperature: float | None,
    max_tokens: int | None,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The request fields every row of a ``generate`` call shares."""
    return {"model": model, "temperature": temperature, "max_tokens": max_tokens, "extra": extra}


#: The spend options and their defaults (``series.minima.generate`` takes them as keywords).
SPEND_OPTIONS = {"max_cost": None, "price": None, "max_tokens_total": None, "preview": True}


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request and naming options, run options) from ``generate``'s keyword arguments."""
    run = {"backend": None, "details": False, "progress": True, "force_refresh": False}
    params = {"system": None, "name": None, "schema": None, "schema_mode": "json", **SPEND_OPTIONS,
              **call_params(None, None, None, None)}
    unknown = sorted(set(options) - set(run) - set(params))
    if unknown:
        raise TypeError(f"generate() got unexpected keyword argument(s) {unknown}; "
                        f"known: {sorted({*run, *params})}")
    for key, value in options.items():
        (run if key in run else params)[key] = value
    return params, run
