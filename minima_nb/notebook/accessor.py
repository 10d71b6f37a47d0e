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
from .jobs import DETAIL_DTYPES, MISSING_PROMPT, Generation, collection_paused
from .options import SPEND_OPTIONS, answer_schema, call_params, is_grid, split_options
from .prompts import check_system, column_slots, frame_slots
from .spend import SpendEstimate, attach_cap, estimate
from .sweep import Sweep

__all__ = ["DETAIL_DTYPES", "MISSING_PROMPT", "MinimaFrameAccessor", "MinimaSeriesAccessor"]


def _warn(message: str | None) -> None:
    if message:
        warnings.warn(message, UserWarning, stacklevel=3)  # points at the user's call


# -- provider batch jobs (the batch API is an edge: loaded when used) ----------------------


def _submit_batch(job: Generation, backend: Any, *, details: bool, force_refresh: bool,
                      prefix: str | None, on_interrupt: str = "wait") -> Any:
    """``job``'s rows as a provider batch job: a ``BatchJob`` whose ``result()`` is generate()'s value.

    The rows are the accessor's own (same requests, same cache keys); cached rows are never sent.
    """
    if force_refresh:
        raise ValueError("via='batch' answers from batches into the cache; force_refresh is not supported "
                         "there (use the live path, or a new cache_namespace)")
    from ..integrations.batchapi.job import BatchJob  # the edge, loaded when used

    backend = session.get_backend() if backend is None else backend
    positions = [p for p, messages in enumerate(job.slots) if messages is not None]
    requests = job._requests(positions)

    def shape(results: list[Any]) -> Any:
        value, warning = job._shape(results, positions, [None] * len(job.slots), details)
        if warning:
            warnings.warn(warning, UserWarning, stacklevel=3)
        return value

    return BatchJob.submit(backend, requests, prefix=prefix, shaper=shape, on_interrupt=on_interrupt)


# -- the accessors ----------------------------------------------------------------------------


@pd.api.extensions.register_dataframe_accessor("minima")
class MinimaFrameAccessor:
    """``df.minima``: run a column of prompts (or a template over the rows) through an LLM.

    Every call is one batch: cached rows are read first, identical prompts are sent once, and
    the result is a new object aligned to ``df.index``; ``df`` itself is never changed.
    """

    def __init__(self, pandas_obj: pd.DataFrame) -> None:
        self._obj = pandas_obj

    def _generation(
        self, prompt: str, system: str | None, name: Hashable | None, params: dict[str, Any],
        schema: Any = None, schema_mode: str = "json",
    ) -> Generation:
        with collection_paused():
            slots, default_name = frame_slots(self._obj, prompt, system)
        return Generation(slots, self._obj.index, default_name if name is None else name, params,
                          answer_schema(schema, schema_mode))

    def generate(self, prompt: str, *, backend: Any = None, system: str | None = None,
                 model: str | None = None, temperature: float | None = None,
                 max_tokens: int | None = None, extra: Mapping[str, Any] | None = None,
                 details: bool = False, progress: Any = True, force_refresh: bool = False,
                 name: Hashable | None = None, schema: Any = None,
                 schema_mode: str = "json", max_cost: float | None = None,
                 price: Mapping[str, float] | None = None,
                 max_tokens_total: int | None = None,
                 preview: bool = True, via: str = "live",
                 prefix: str | None = None) -> pd.Series | pd.DataFrame:
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

        ``schema`` (a pydantic model class or a JSON-schema dict) asks for typed answers: the
        result is a DataFrame with one typed column per field (nested objects as dicts), plus
        the details columns with ``details=True`` (``text`` is the raw answer). An answer that
        does not validate is asked again (a refresh with a new seed, up to ``max_attempts``),
        then is ``<NA>`` with the reason in ``error``; only validated answers are cached.
        ``schema_mode="prompt"`` puts the schema in the system message instead of
        ``response_format`` (for servers without it) and reads the JSON tolerantly.

        ``max_cost`` (with ``price={"input": ..., "output": ...}`` per million tokens) and
        ``max_tokens_total`` cap the spend: no new row is taken once the usage billed so far
        plus the rows in flight would pass the cap, and the call ends with ``BudgetExceeded``
        (a ``BatchAborted``: ``exc.partial`` holds every answered row, all cached).
        ``preview=False`` hides the last answers and failures shown under the notebook bar.

        ``via="batch"`` sends the uncached rows as provider batch jobs (half price, up to 24 h)
        named ``prefix`` and waits for them; interrupting the wait leaves them running, and
        running the cell again reattaches (see :meth:`submit`).

        >>> df["answer"] = df.minima.generate("prompt")                          # doctest: +SKIP
        >>> df.minima.generate("Summarise: {text}", system="Be brief.", details=True)  # doctest: +SKIP
        """
        job = self._generation(prompt, system, name,
                               call_params(model, temperature, max_tokens, extra), schema,
                               schema_mode)
        attach_cap(job, backend, max_cost, max_tokens_total, price, force_refresh)
        job.preview = preview
        if via not in ("live", "batch"):
            raise ValueError(f"via={via!r}: use 'live' (the default) or 'batch' (provider batch jobs)")
        if via == "batch":
            if schema is not None or max_cost is not None or max_tokens_total is not None:
                raise ValueError("via='batch' does not take schema=, max_cost= or max_tokens_total= yet; "
                                 "use the live path for those")
            batch = _submit_batch(job, backend, details=details, force_refresh=force_refresh, prefix=prefix)
            return batch.wait(progress=progress).result()
        value, warning = job.run(backend, details=details, progress=progress,
                                 force_refresh=force_refresh)
        _warn(warning)
        return value

    def submit(self, prompt: str, *, backend: Any = None, system: str | None = None,
               model: str | None = None, temperature: float | None = None,
               max_tokens: int | None = None, extra: Mapping[str, Any] | None = None,
               details: bool = False, name: Hashable | None = None, prefix: str | None = None,
               on_interrupt: str = "wait") -> Any:
        """Submit the uncached rows as provider batch jobs and return a ``BatchJob`` at once.

        ``job.status()``, ``job.wait()``, ``job.cancel()``; ``job.result()`` is what
        ``generate(...)`` would have returned. The job's state is on disk (beside the cache):
        after a restart, running the same cell again reattaches to it.

        >>> job = df.minima.submit("prompt", prefix="run-7")                      # doctest: +SKIP
        >>> df["answer"] = job.wait().result()                                   # doctest: +SKIP
        """
        job = self._generation(prompt, system, name, call_params(model, temperature, max_tokens, extra))
        return _submit_batch(job, backend, details=details, force_refresh=False, prefix=prefix,
                                 on_interrupt=on_interrupt)

    def estimate(self, prompt: Any, *, backend: Any = None, system: str | None = None,
                 model: Any = None, temperature: Any = None, max_tokens: Any = None,
                 extra: Mapping[str, Any] | None = None, schema: Any = None,
                 schema_mode: str = "json", price: Mapping[str, float] | None = None,
                 tokenizer: str = "auto", inputs: Mapping[str, str] | None = None,
                 **grid: Any) -> SpendEstimate:
        """What a call with these arguments would send and cost; sends nothing.

        Give it the arguments of the call you mean to make: ``generate``'s, or a sweep's grid
        (a list for ``model``/``temperature``/``max_tokens``, or any other grid key, as in
        :meth:`sweep`), or a DSPy program (and ``inputs=``) for :meth:`predict`, whose prompts
        DSPy formats here exactly as it would send them (``dspy.Predict`` and
        ``dspy.ChainOfThought`` only: other modules' calls are known only by running them).

        Rows, distinct requests, how many are already cached (read from the cache), how many
        would be sent, their input tokens (tiktoken when installed with its encoding on disk,
        else 4 characters per token), the expected output tokens (the mean of each model's
        cached answers, and ``max_tokens`` as the ceiling) and, with ``price={"input": 0.15,
        "output": 0.60}`` (per million tokens), the cost range.

        >>> print(df.minima.estimate("prompt", max_tokens=200, price={"input": 0.15, "output": 0.6}))  # doctest: +SKIP
        >>> df.minima.estimate("prompt", model=["a", "b"], temperature=[0, 0.7])  # a sweep  # doctest: +SKIP
        """
        if not isinstance(prompt, str) and callable(getattr(prompt, "acall", None)):
            from ..integrations.dspy.frame import PredictJob  # DSPy loads only when asked for

            if grid or any(v is not None for v in (system, model, temperature, max_tokens, extra, schema)):
                raise TypeError("estimate(program) takes predict()'s arguments (inputs=, price=, "
                                "tokenizer=): the program's signature and LM settings make its prompts")
            return PredictJob(self._obj, program=prompt, inputs=inputs, backend=backend,
                              force_refresh=False).estimate(price, tokenizer)
        if inputs is not None:
            raise TypeError("inputs= names a DSPy program's input columns: pass the program itself")
        backend = session.get_backend() if backend is None else backend
        job: Generation | Sweep
        if grid or any(is_grid(v) for v in (model, temperature, max_tokens)):
            named = {"model": model, "temperature": temperature, "max_tokens": max_tokens}
            grid = {**dict(extra or {}), **{k: v for k, v in named.items() if v is not None}, **grid}
            job = self._sweep(prompt, system, backend, grid, schema, schema_mode)
        else:
            job = self._generation(prompt, system, None,
                                   call_params(model, temperature, max_tokens, extra), schema,
                                   schema_mode)
        hits = job.lookup(backend, False, text_only=True)
        return estimate(backend, job.spend_groups(hits), price, tokenizer)

    def _sweep(self, prompt: str, system: str | None, backend: Any, grid: dict[str, Any],
               schema: Any, schema_mode: str) -> Sweep:
        with collection_paused():
            row_slots, _ = frame_slots(self._obj, prompt, system)
        model = getattr(getattr(backend, "config", None), "model", None)
        return Sweep(self._obj, row_slots, grid, model, answer_schema(schema, schema_mode))

    async def agenerate(self, prompt: str, *, backend: Any = None, system: str | None = None,
                        model: str | None = None, temperature: float | None = None,
                        max_tokens: int | None = None, extra: Mapping[str, Any] | None = None,
                        details: bool = False, progress: Any = True,
                        force_refresh: bool = False, name: Hashable | None = None,
                        schema: Any = None, schema_mode: str = "json",
                        max_cost: float | None = None, price: Mapping[str, float] | None = None,
                        max_tokens_total: int | None = None,
                        preview: bool = True) -> pd.Series | pd.DataFrame:
        """:meth:`generate` on the caller's event loop: ``out = await df.minima.agenerate("prompt")``.

        Same arguments and results (live requests only). In a notebook prefer the sync
        :meth:`generate`: a cell that awaits cannot be interrupted until the work ends
        (ipykernel issue 881).

        >>> answers = await df.minima.agenerate("prompt", progress=False)        # doctest: +SKIP
        """
        job = self._generation(prompt, system, name,
                               call_params(model, temperature, max_tokens, extra), schema,
                               schema_mode)
        attach_cap(job, backend, max_cost, max_tokens_total, price, force_refresh)
        job.preview = preview
        value, warning = await job.arun(backend, details=details, progress=progress,
                                        force_refresh=force_refresh)
        _warn(warning)
        return value

    def predict(self, program: Any, *, inputs: Mapping[str, str] | None = None, details: bool = False,
                progress: Any = True, backend: Any = None, force_refresh: bool = False,
                max_cost: float | None = None, price: Mapping[str, float] | None = None,
                max_tokens_total: int | None = None, preview: bool = True,
                schema: Any = None) -> pd.DataFrame:
        """Run a DSPy program on every row; a DataFrame with one column per output field.

        ``program`` is any DSPy module (``dspy.Predict(Sig)``, ``dspy.ChainOfThought(Sig)``, your
        own). Its input fields come from the same-named columns, or ``inputs={"field": "column"}``.
        All rows run as one batch on the engine, with the progress display of :meth:`generate`
        (its preview shows each row's input and output fields). A row that fails is ``<NA>``
        (one warning counts them); ``details=True`` adds ``cached``, ``error``, ``attempts``,
        ``input_tokens`` and ``output_tokens``. Every LM call is cached, so running the same call
        again sends nothing. ``max_cost``/``price``/``max_tokens_total`` cap the spend as in
        :meth:`generate` (``BudgetExceeded`` with ``exc.partial``); ``df.minima.estimate(program)``
        says what it would cost first. The signature types the outputs, so there is no
        ``schema=``. Needs ``pip install 'minima-nb[dspy]'``.

        >>> out = df.minima.predict(dspy.ChainOfThought("question -> answer"))  # doctest: +SKIP
        """
        job = self._predict_job(program, inputs, backend, force_refresh, schema, max_cost, price,
                                max_tokens_total, preview)
        value, warning = job.run(details=details, progress=progress)
        _warn(warning)
        return value

    async def apredict(self, program: Any, *, inputs: Mapping[str, str] | None = None,
                       details: bool = False, progress: Any = True, backend: Any = None,
                       force_refresh: bool = False, max_cost: float | None = None,
                       price: Mapping[str, float] | None = None,
                       max_tokens_total: int | None = None, preview: bool = True,
                       schema: Any = None) -> pd.DataFrame:
        """:meth:`predict`, awaitable: ``out = await df.minima.apredict(program)``.

        >>> out = await df.minima.apredict(dspy.Predict("question -> answer"))  # doctest: +SKIP
        """
        job = self._predict_job(program, inputs, backend, force_refresh, schema, max_cost, price,
                                max_tokens_total, preview)
        value, warning = await job.arun(details=details, progress=progress)
        _warn(warning)
        return value

    def _predict_job(self, program: Any, inputs: Mapping[str, str] | None, backend: Any,
                     force_refresh: bool, schema: Any, max_cost: float | None,
                     price: Mapping[str, float] | None, max_tokens_total: int | None,
                     preview: bool) -> Any:
        if schema is not None:
            raise TypeError("predict() takes no schema=: the DSPy signature types the outputs "
                            "(declare them, e.g. `score: float = dspy.OutputField()`). For typed "
                            "answers to a plain prompt use df.minima.generate(prompt, schema=...)")
        from ..integrations.dspy.frame import PredictJob  # DSPy loads only when asked for

        job = PredictJob(self._obj, program, inputs, backend, force_refresh)
        job.limit(max_cost, max_tokens_total, price)
        job.preview = preview
        return job

    def sweep(self, prompt: str, *, backend: Any = None, system: str | None = None,
              progress: Any = True, force_refresh: bool = False, schema: Any = None,
              schema_mode: str = "json", max_cost: float | None = None,
              price: Mapping[str, float] | None = None, max_tokens_total: int | None = None,
              preview: bool = True, **grid: Any) -> pd.DataFrame:
        """Answer every row under every combination of the ``grid``; one long DataFrame.

        Grid keys ``model``, ``temperature`` and ``max_tokens`` set those request fields; any
        other key (``top_p``, ``seed``...) is sent as an extra OpenAI parameter. Each value is a
        scalar or a list. Every (row, combination) pair goes into ONE batch (one cache, one
        rate limit). Columns: ``row`` (the original index label), ``model`` (the grid's, or the
        backend's when not swept), the other grid keys, the typed columns of ``schema`` (as in
        :meth:`generate`) when given, then the ``details=True`` columns.

        ``max_cost``/``price``/``max_tokens_total`` cap the whole sweep's spend as in
        :meth:`generate` (``BudgetExceeded``; ``exc.partial`` is this long frame with every
        answered pair, all cached); ``df.minima.estimate`` with the same grid says what it
        would cost first. ``preview=False`` hides the last answers under the notebook bar.

        >>> runs = df.minima.sweep("prompt", model=["a", "b"], temperature=[0, 0.7])  # doctest: +SKIP
        >>> runs.pivot_table(index="row", columns=["model", "temperature"],
        ...                  values="text", aggfunc="first")                    # doctest: +SKIP
        """
        backend = session.get_backend() if backend is None else backend
        job = self._sweep(prompt, system, backend, grid, schema, schema_mode)
        attach_cap(job, backend, max_cost, max_tokens_total, price, force_refresh)
        job.preview = preview
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
        params, run_options = split_options(options)
        system, name = check_system(params.pop("system")), params.pop("name")
        schema = answer_schema(params.pop("schema"), params.pop("schema_mode"))
        spend = {key: params.pop(key) for key in SPEND_OPTIONS}
        series = self._obj
        column = "<series>" if series.name is None else series.name
        with collection_paused():
            slots = column_slots(series.tolist(), series.index, column, system)
        job = Generation(slots, series.index, series.name if name is None else name, params, schema)
        attach_cap(job, run_options["backend"], spend["max_cost"], spend["max_tokens_total"],
                   spend["price"], run_options["force_refresh"])
        job.preview = spend["preview"]
        return job, run_options

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
