"""Row jobs: one async function over many rows as ONE batch on the engine, and their result frame.

``df.minima.predict`` (a DSPy program per row) and minima-llm's ``run_dspy_batch`` helpers run a
coroutine per row rather than a request per row; this module gives them what ``generate`` has:
the batch runs on minima_nb's private loop with the engine's worker pool (``max_outstanding``
in flight, the failure budget, an abort at the first error every row would share), the same
progress display drawn and closed on the caller's thread, and Ctrl-C that cancels the work while
every finished answer stays in the cache. It knows nothing of DSPy: a row function returns a
mapping of output values, or a :class:`MinimaLlmFailure` for a row that failed.

``outputs_frame`` shapes those results into a DataFrame aligned to the caller's index: one column
per output field (typed: ``boolean``, ``Int64``, ``Float64``, ``string``, else ``object``), and
with ``details=True`` the per-row ``cached``, ``error``, ``attempts`` and token columns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

import pandas as pd

from ..errors import BatchAborted
from ..types import MinimaLlmFailure
from .batchrun import CloseOnCaller, sink_for
from .preview import fields_line

__all__ = ["ROW_DETAIL_DTYPES", "RowOutputs", "arun_rows", "outputs_frame", "run_rows"]

#: Columns ``details=True`` adds, with their nullable dtypes.
ROW_DETAIL_DTYPES: dict[str, str] = {
    "cached": "boolean", "error": "string", "attempts": "Int64",
    "input_tokens": "Int64", "output_tokens": "Int64",
}
RowFn = Callable[[Any], Awaitable[Any]]


class RowOutputs(dict[str, Any]):
    """A row's output values; ``cached`` (every LM call answered from the cache) drives progress.

    ``request_id`` and ``text`` (the values on one line) are what the batch keeps of its last
    rows for the live preview.
    """

    def __init__(self, *args: Any, cached: bool = False, request_id: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cached = cached
        if request_id is not None:
            self.request_id = request_id

    @property
    def text(self) -> str:
        """The output values on one line, for the preview."""
        return fields_line(self)


Guard = Callable[[Coroutine[Any, Any, Any]], Coroutine[Any, Any, Any]]


def _batch(backend: Any, items: Sequence[Any], row_fn: RowFn, sink: Any, label: str,
           guard: Guard | None) -> Any:
    from ..engine.pool import run_batched_callable  # the engine loads on first use

    config = getattr(backend, "config", None)
    batch = getattr(config, "batch", None)
    workers = getattr(config, "max_outstanding", None)
    work = run_batched_callable(items, row_fn, batch_config=batch, num_workers=workers,
                                progress=sink, label=label, draw_in_loop=False)
    return work if guard is None else guard(work)


def run_rows(backend: Any, items: Sequence[Any], row_fn: RowFn, *, progress: Any, label: str,
             guard: Guard | None = None, setup: Callable[[Any], Any] | None = None,
             started: float | None = None) -> list[Any]:
    """``row_fn`` over ``items`` as one batch on the private loop; blocks (works in a kernel cell).

    Raises ``BatchAborted`` (with every finished result) past the failure budget or a spend cap
    (``guard`` sets one around the batch), and ``KeyboardInterrupt`` after cancelling the rows
    still running. ``setup`` prepares the sink (its preview); ``started`` is when the call began.
    """
    from ..engine.sync import run_sync

    sink = CloseOnCaller(_setup(setup, sink_for(backend, progress, label)), started)
    status = "error"
    try:
        results = run_sync(_batch(backend, items, row_fn, sink, label, guard), on_poll=sink.draw)
        status = "done"
        return results
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BatchAborted:
        status = "aborted"
        raise
    finally:
        sink.finish(status)


async def arun_rows(backend: Any, items: Sequence[Any], row_fn: RowFn, *, progress: Any, label: str,
                    guard: Guard | None = None, setup: Callable[[Any], Any] | None = None,
                    started: float | None = None) -> list[Any]:
    """:func:`run_rows` awaited from the caller's loop: the batch still runs on the private loop
    (so every LM call shares its connection pool and limits), the display is drawn here."""
    from ..engine.loop import background_loop, in_background_loop

    sink = CloseOnCaller(_setup(setup, sink_for(backend, progress, label)), started)
    status = "error"
    coro = _batch(backend, items, row_fn, sink, label, guard)
    future: asyncio.Future[list[Any]] | None = None
    try:
        if in_background_loop():
            results: list[Any] = await coro
        else:
            future = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, background_loop()))
            while not future.done():
                sink.draw()
                await asyncio.wait({future}, timeout=0.1)
            results = future.result()
        status = "done"
        return results
    except asyncio.CancelledError:
        status = "interrupted"
        if future is not None:
            future.cancel()  # cancels the batch's task on the private loop (its rows stay cached)
        raise
    except BatchAborted:
        status = "aborted"
        raise
    finally:
        sink.finish(status)


def _setup(setup: Callable[[Any], Any] | None, sink: Any) -> Any:
    return sink if setup is None else setup(sink)


def _column(values: list[Any]) -> Any:
    """A typed, nullable column for one output field's values (None where a row has none)."""
    present = [v for v in values if v is not None]
    kinds = {type(v) for v in present}
    for dtype, accepted in (("boolean", {bool}), ("Int64", {int}), ("Float64", {float, int}),
                            ("string", {str})):
        if present and kinds <= accepted:
            return pd.array(values, dtype=dtype)
    return pd.array(values, dtype=object) if present else pd.array(values, dtype="string")


def outputs_frame(
    results: Sequence[Any],
    index: pd.Index,
    fields: Sequence[str],
    details: bool,
    info: Sequence[Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """One row per result: a column per name in ``fields`` (``<NA>`` for failed rows).

    ``results[i]`` is a mapping of field values, a :class:`MinimaLlmFailure`, or None (never ran).
    ``info[i]`` gives the details columns of row ``i`` (``ROW_DETAIL_DTYPES``); a failure's
    ``error`` is its type and message.
    """
    values = {name: [r.get(name) if isinstance(r, Mapping) else None for r in results] for name in fields}
    data: dict[str, Any] = {name: _column(column) for name, column in values.items()}
    if details:
        rows = [dict(info[i]) if info is not None else {} for i in range(len(results))]
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, MinimaLlmFailure):
                row["error"] = f"{result.error_type}: {result.message}"
                row.setdefault("attempts", result.attempts)
        for name, dtype in ROW_DETAIL_DTYPES.items():
            data[name] = pd.array([row.get(name) for row in rows], dtype=dtype)
    return pd.DataFrame(data, index=index)
