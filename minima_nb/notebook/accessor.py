"""The pandas accessor ``minima``: ``df.minima.generate("prompt")``, ``agenerate``, ``sweep``, ``predict``.

It owns the notebook-facing surface: the methods, their arguments and their documentation. A
call turns a column (strings or chat message lists) or a ``{field}`` template into one prompt
per row (``prompts.py``), then hands them to a job (``jobs.py``) that reads the cached rows in
bulk, runs the rest as ONE batch through the backend, and shapes the answers into pandas
objects aligned to the input's index (duplicate labels included). The accessor keeps no state
beyond the pandas object it wraps (pandas builds a new accessor on every ``df.minima`` access)
and never mutates that object.

Threads: the sync methods run the batch on minima_nb's private loop (``run_sync``); snapshots
are counted there, while the progress display is drawn *and closed* on the caller's thread, so
a notebook bar always lands in the cell that made the call.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping
from typing import Any

import pandas as pd

from . import session
from .jobs import DETAIL_DTYPES, MISSING_PROMPT, Generation, Sweep, collection_paused
from .prompts import check_system, column_slots, frame_slots

__all__ = ["DETAIL_DTYPES", "MISSING_PROMPT", "MinimaFrameAccessor", "MinimaSeriesAccessor"]


def _warn(message: str | None) -> None:
    if message:
        warnings.warn(message, UserWarning, stacklevel=3)  # points at the user's call


# -- the accessors ----------------------------------------------------------------------------


def _call_params(
    model: str | None,
    temperature: float | None,
    max_tokens: int | None,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    return {"model": model, "temperature": temperature, "max_tokens": max_tokens, "extra": extra}


@pd.api.extensions.register_dataframe_accessor("minima")
class MinimaFrameAccessor:
    """``df.minima``: run a column of prompts (or a template over the rows) through an LLM.

    Every call is one batch: cached rows are read first, identical prompts are sent once, and
    the result is a new object aligned to ``df.index``; ``df`` itself is never changed.
    """

    def __init__(self, pandas_obj: pd.DataFrame) -> None:
        self._obj = pandas_obj

    def _generation(
        self, prompt: str, system: str | None, name: Hashable | None, params: dict[str, Any]
    ) -> Generation:
        with collection_paused():
            slots, default_name = frame_slots(self._obj, prompt, system)
        return Generation(slots, self._obj.index, default_name if name is None else name, params)

    def generate(self, prompt: str, *, backend: Any = None, system: str | None = None,
                 model: str | None = None, temperature: float | None = None,
                 max_tokens: int | None = None, extra: Mapping[str, Any] | None = None,
                 details: bool = False, progress: Any = True, force_refresh: bool = False,
                 name: Hashable | None = None) -> pd.Series | pd.DataFrame:
        """Answer every row's prompt; a ``string`` Series aligned to ``df.index``.

        ``prompt`` is a column of strings or chat message lists, or a template such as
        ``"Translate to French: {text}"`` filled from each row. ``system`` is prepended as a
        system message. Missing prompts (NaN, None, "", []) are not sent and come back
        ``<NA>``, as do failed rows (one warning counts them). ``details=True`` returns a
        DataFrame instead: text, cached, error, finish_reason, input_tokens, output_tokens,
        attempts, latency_s, model. ``backend`` defaults to the one set by
        ``minima_nb.configure()`` (or the environment); ``model`` overrides its model for this
        call. ``progress``: True (a bar in a notebook, a heartbeat line elsewhere), False,
        ``"text"``, ``"notebook"`` or a sink object.

        If the batch stops early, ``BatchAborted`` is raised with ``exc.partial``: the details
        frame of what finished (rows that never ran are ``<NA>``). Everything answered is in the
        cache, so running the same call again resumes.

        >>> df["answer"] = df.minima.generate("prompt")                          # doctest: +SKIP
        >>> df.minima.generate("Summarise: {text}", system="Be brief.", details=True)  # doctest: +SKIP
        """
        job = self._generation(prompt, system, name,
                               _call_params(model, temperature, max_tokens, extra))
        value, warning = job.run(backend, details=details, progress=progress,
                                 force_refresh=force_refresh)
        _warn(warning)
        return value

    async def agenerate(self, prompt: str, *, backend: Any = None, system: str | None = None,
                        model: str | None = None, temperature: float | None = None,
                        max_tokens: int | None = None, extra: Mapping[str, Any] | None = None,
                        details: bool = False, progress: Any = True,
                        force_refresh: bool = False,
                        name: Hashable | None = None) -> pd.Series | pd.DataFrame:
        """:meth:`generate` on the caller's event loop: ``out = await df.minima.agenerate("prompt")``.

        Same arguments and results. In a notebook prefer the sync :meth:`generate`: a cell that
        awaits cannot be interrupted until the work ends (ipykernel issue 881).

        >>> answers = await df.minima.agenerate("prompt", progress=False)        # doctest: +SKIP
        """
        job = self._generation(prompt, system, name,
                               _call_params(model, temperature, max_tokens, extra))
        value, warning = await job.arun(backend, details=details, progress=progress,
                                        force_refresh=force_refresh)
        _warn(warning)
        return value

    def predict(self, program: Any, *, inputs: Mapping[str, str] | None = None, details: bool = False,
                progress: Any = True, backend: Any = None, force_refresh: bool = False) -> pd.DataFrame:
        """Run a DSPy program on every row; a DataFrame with one column per output field.

        ``program`` is any DSPy module (``dspy.Predict(Sig)``, ``dspy.ChainOfThought(Sig)``, your
        own). Its input fields come from the same-named columns, or ``inputs={"field": "column"}``.
        All rows run as one batch on the engine, with the progress display of :meth:`generate`.
        A row that fails is ``<NA>`` (one warning counts them); ``details=True`` adds ``cached``,
        ``error``, ``attempts``, ``input_tokens`` and ``output_tokens``. Every LM call is cached,
        so running the same call again sends nothing. Needs ``pip install 'minima-nb[dspy]'``.

        >>> out = df.minima.predict(dspy.ChainOfThought("question -> answer"))  # doctest: +SKIP
        """
        from ..integrations.dspy.frame import PredictJob  # DSPy loads only when asked for

        job = PredictJob(self._obj, program, inputs, backend, force_refresh)
        value, warning = job.run(details=details, progress=progress)
        _warn(warning)
        return value

    async def apredict(self, program: Any, *, inputs: Mapping[str, str] | None = None,
                       details: bool = False, progress: Any = True, backend: Any = None,
                       force_refresh: bool = False) -> pd.DataFrame:
        """:meth:`predict`, awaitable: ``out = await df.minima.apredict(program)``.

        >>> out = await df.minima.apredict(dspy.Predict("question -> answer"))  # doctest: +SKIP
        """
        from ..integrations.dspy.frame import PredictJob

        job = PredictJob(self._obj, program, inputs, backend, force_refresh)
        value, warning = await job.arun(details=details, progress=progress)
        _warn(warning)
        return value

    def sweep(self, prompt: str, *, backend: Any = None, system: str | None = None,
              progress: Any = True, force_refresh: bool = False, **grid: Any) -> pd.DataFrame:
        """Answer every row under every combination of the ``grid``; one long DataFrame.

        Grid keys ``model``, ``temperature`` and ``max_tokens`` set those request fields; any
        other key (``top_p``, ``seed``...) is sent as an extra OpenAI parameter. Each value is a
        scalar or a list. Every (row, combination) pair goes into ONE batch (one cache, one
        rate limit). Columns: ``row`` (the original index label), ``model`` (the grid's, or the
        backend's when not swept), the other grid keys, then the ``details=True`` columns.

        >>> runs = df.minima.sweep("prompt", model=["a", "b"], temperature=[0, 0.7])  # doctest: +SKIP
        >>> runs.pivot_table(index="row", columns=["model", "temperature"],
        ...                  values="text", aggfunc="first")                    # doctest: +SKIP
        """
        backend = session.get_backend() if backend is None else backend
        row_slots, _ = frame_slots(self._obj, prompt, system)
        model = getattr(getattr(backend, "config", None), "model", None)
        job = Sweep(self._obj, row_slots, grid, model)
        value, _ = job.run(backend, details=True, progress=progress, force_refresh=force_refresh)
        return value


@pd.api.extensions.register_series_accessor("minima")
class MinimaSeriesAccessor:
    """``series.minima``: the DataFrame accessor with the Series as the prompt column.

    ``generate``/``agenerate`` take the keyword arguments of ``DataFrame.minima.generate``.
    """

    def __init__(self, pandas_obj: pd.Series) -> None:
        self._obj = pandas_obj

    def _generation(self, options: dict[str, Any]) -> tuple[Generation, dict[str, Any]]:
        params, run_options = _split_options(options)
        system, name = check_system(params.pop("system")), params.pop("name")
        series = self._obj
        column = "<series>" if series.name is None else series.name
        with collection_paused():
            slots = column_slots(series.tolist(), series.index, column, system)
        return Generation(slots, series.index, series.name if name is None else name,
                           params), run_options

    def generate(self, **options: Any) -> pd.Series | pd.DataFrame:
        """Answer each value (a string or a chat message list); see ``DataFrame.minima.generate``.

        >>> df["answer"] = df["prompt"].minima.generate(system="Answer in one word.")  # doctest: +SKIP
        """
        job, run_options = self._generation(options)
        value, warning = job.run(**run_options)
        _warn(warning)
        return value

    async def agenerate(self, **options: Any) -> pd.Series | pd.DataFrame:
        """:meth:`generate` on the caller's event loop.

        >>> answers = await df["prompt"].minima.agenerate(progress=False)        # doctest: +SKIP
        """
        job, run_options = self._generation(options)
        value, warning = await job.arun(**run_options)
        _warn(warning)
        return value


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request and naming options, run options) from ``generate``'s keyword arguments."""
    run = {"backend": None, "details": False, "progress": True, "force_refresh": False}
    params = {"system": None, "name": None, **_call_params(None, None, None, None)}
    unknown = sorted(set(options) - set(run) - set(params))
    if unknown:
        raise TypeError(f"generate() got unexpected keyword argument(s) {unknown}; "
                        f"known: {sorted({*run, *params})}")
    for key, value in options.items():
        (run if key in run else params)[key] = value
    return params, run
