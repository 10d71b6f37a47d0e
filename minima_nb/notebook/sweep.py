"""``sweep``: every row under every combination of a grid of request fields, as one batch.

A :class:`Sweep` is a job (``jobs.py``) with one slot per (row, combination), row by row, so
every pair shares one cache, one rate limit and one progress bar. Grid keys ``model``,
``temperature`` and ``max_tokens`` set those request fields; any other key is an extra OpenAI
parameter. The result is one long frame: the row's label, the grid values, the typed columns of
a ``schema=`` if one was given, then the details columns.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .jobs import DETAIL_DTYPES, REQUEST_PARAMS, _details_frame, _Job, _plain, _text
from .prompts import Messages
from .schema import AnswerSchema
from .typed import typed_details

__all__ = ["Sweep"]


def _grid_options(key: str, value: Any) -> list[Any]:
    if isinstance(value, (list, tuple, range, np.ndarray, pd.Index, pd.Series)):
        options = list(value)
        if not options:
            raise ValueError(f"sweep: {key}= has no values; give a value or a non-empty list")
        return options
    return [value]


def _combo_params(combo: dict[str, Any]) -> dict[str, Any]:
    params = {k: _plain(combo[k]) for k in REQUEST_PARAMS if k in combo}
    extra = {k: _plain(v) for k, v in combo.items() if k not in REQUEST_PARAMS and v is not None}
    return {**params, "extra": extra or None}


class Sweep(_Job):
    """``sweep``: one slot per (row, grid combination), row by row, all in one batch."""

    label = "minima sweep"

    def __init__(
        self,
        frame: pd.DataFrame,
        row_slots: Sequence[Messages | None],
        grid: dict[str, Any],
        model: str | None,
        schema: AnswerSchema | None = None,
    ) -> None:
        clash = sorted(set(grid) & ({"row", *DETAIL_DTYPES, *(schema.fields if schema else ())}
                                    - {"model"}))
        if clash:
            raise ValueError(f"sweep: {clash} would clash with the result's columns; rename them")
        self.keys = list(grid)
        options = [_grid_options(k, v) for k, v in grid.items()]
        self.combos = list(itertools.product(*options))
        self.varied = [k for k, values in zip(self.keys, options, strict=True) if len(values) > 1]
        self.configured_model = model
        self.rows = frame.index.repeat(len(self.combos))
        width = len(self.combos)
        slots = [messages for messages in row_slots for _ in range(width)]
        self.schema = schema
        if schema is not None:
            slots = schema.prompted(slots)

            def params_of(p: int) -> dict[str, Any]:
                params = _combo_params(self._combo(p))
                return {**params, "extra": schema.merged_extra(params["extra"])}
        else:
            def params_of(p: int) -> dict[str, Any]:
                return _combo_params(self._combo(p))
        super().__init__(slots, params_of)

    def lookup(self, backend: Any, force_refresh: bool, text_only: bool) -> list[Any]:
        # A bulk read per combination (they share their request fields): a cached re-run of a
        # sweep builds no request, and the estimate and the spend cap know what is cached.
        bulk_lookup = getattr(backend, "lookup", None)
        if force_refresh or bulk_lookup is None:
            return super().lookup(backend, force_refresh, text_only)
        width = len(self.combos)
        hits: list[Any] = [None] * len(self.slots)
        for c in range(width):
            hits[c::width] = bulk_lookup(self.slots[c::width], text_only=text_only,
                                         **self.params_of(c))
        return hits

    def spend_groups(self, hits: list[Any]) -> list[tuple[list[Any], list[Any], dict[str, Any]]]:
        width = len(self.combos)
        return [(self.slots[c::width], hits[c::width], self.params_of(c)) for c in range(width)]

    def preview_prompt(self) -> Callable[[str], str]:
        # A sweep's preview says which combination answered: "[model=a temperature=0] prompt"
        # (the swept keys only: a key with one value is the same on every line).
        prompt_of = super().preview_prompt()

        def with_combo(request_id: str) -> str:
            try:
                combo = self._combo(int(str(request_id).rsplit("-", 1)[-1]))
            except ValueError:
                return prompt_of(request_id)
            grid = " ".join(f"{k}={combo[k]}" for k in self.varied)
            return f"[{grid}] {prompt_of(request_id)}" if grid else prompt_of(request_id)

        return with_combo

    def _combo(self, position: int) -> dict[str, Any]:
        return dict(zip(self.keys, self.combos[position % len(self.combos)], strict=True))

    def shape(self, results: list[Any], details: bool) -> tuple[Any, str | None]:
        combos = [self._combo(p) for p in range(len(self.slots))]
        columns: dict[str, Any] = {"row": self.rows}
        columns["model"] = [c.get("model") or self.configured_model for c in combos]
        for key in self.keys:
            if key != "model":
                columns[key] = [c[key] for c in combos]
        grid = pd.DataFrame(columns)
        info = _details_frame(results, self.slots, grid.index).drop(columns="model")
        if self.schema is not None:
            typed, info = typed_details(self.schema, results, _text, info)
            return pd.concat([grid, typed, info], axis=1), None
        return pd.concat([grid, info], axis=1), None
