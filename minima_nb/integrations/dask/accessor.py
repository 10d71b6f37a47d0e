"""``ddf.minima`` and ``series.minima`` on Dask collections: a lazy ``generate`` over the partitions.

Registered with dask's accessor API (``dask.dataframe.extensions``). ``generate`` checks its
arguments on the collection's ``meta`` (an empty pandas frame) with the pandas accessor's code,
so a wrong column or template fails at once, and builds ONE ``map_partitions`` with an explicit
``meta``: without it dask would run the function on fake data while building the graph (a
billed request, or an error without a key). Nothing is sent before ``compute()``.

The graph carries a :class:`~.settings.RunSpec`: the settings without the key and the NAME of
the environment variable workers read it from. With a distributed client, ``rpm`` becomes one
global budget leased by the scheduler (:mod:`.budget`), and a WorkerPlugin closes the workers'
engines when they stop (:mod:`.worker`). The spec also carries a token naming the
computation: its partitions' progress events open one live view in the notebook (:mod:`.live`).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Hashable, Mapping
from typing import Any

import dask.dataframe as dd
import pandas as pd
from dask.base import tokenize

from ...errors import ConfigError
from ...notebook import session
from ...notebook.jobs import DETAIL_DTYPES, Generation
from ...notebook.prompts import _template_fields, check_system, column_slots, frame_slots
from ...notebook.sweep import Sweep
from . import budget, live, worker
from .partition import generate_partition
from .settings import DEFAULT_KEY_ENV, BudgetSpec, EngineSettings, RunSpec

LABEL = "minima (dask)"
PROGRESS_KINDS = ("text", "notebook", "none")
_closer_lock = threading.Lock()
_closers: set[str] = set()


def _client() -> Any:
    """The distributed client in use, or None (the threaded scheduler)."""
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def _meta(index: pd.Index, name: Hashable | None, details: bool) -> pd.Series | pd.DataFrame:
    """What one partition's result looks like, built by the same code that shapes it."""
    job = Generation([], index[:0], name, {})
    value, _ = job.shape([], details)
    return value


def _budget(client: Any, config: Any, rpm: int, key_env: str | None) -> BudgetSpec | None:
    """The global budget for this run, or None (no cluster, or pacing off)."""
    if client is None or rpm <= 0:
        return None
    budget.ensure_plugin(client)
    # One budget per endpoint and key: runs that share them share the provider's limit.
    ident = "|".join(str(x) for x in (config.base_url, key_env, rpm))
    budget_id = hashlib.sha256(ident.encode()).hexdigest()[:16]
    workers = len(client.scheduler_info().get("workers", {})) or 1
    return BudgetSpec(budget_id, int(rpm), workers)


def _register_closer(client: Any) -> None:
    ident = str(client.scheduler.address)
    with _closer_lock:
        if ident in _closers:
            return
    client.register_plugin(worker.EngineCloser())
    with _closer_lock:
        _closers.add(ident)


def build_spec(*, prompt: Any, system: str | None, name: Hashable | None, details: bool,
               force_refresh: bool, params: dict[str, Any], backend: Any, rpm: int | None,
               key_env: str | None, local_cache: bool, progress: Any) -> tuple[RunSpec, Any]:
    """The run's spec and its config, after handing the key over in-process and setting up the
    cluster side."""
    backend = session.get_backend() if backend is None else backend
    config = backend.config
    key_env = key_env or DEFAULT_KEY_ENV
    if config.api_key and os.environ.get(key_env) != config.api_key:
        # Only this process (the threaded scheduler, processes=False) can see it this way;
        # worker processes read key_env from their environment, or get it from share_key().
        worker.remember_key(key_env, config.api_key)
    settings = EngineSettings.from_config(config, key_env=key_env, local_cache=local_cache)
    client = _client()
    if client is not None:
        _register_closer(client)
    rpm = config.rpm if rpm is None else int(rpm)
    extra = params.get("extra")
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"extra must be a dict of OpenAI parameters, not {type(extra).__name__}")
    spec = RunSpec(
        engine=settings, prompt=prompt, system=system, params=tuple(params.items()),
        details=details, force_refresh=force_refresh, name=name,
        budget=_budget(client, config, rpm, settings.key_env), report=_reports(progress),
    )
    return spec, config


def _reports(progress: Any) -> bool:
    """Whether partitions send progress events; a wrong value fails now, not on the workers."""
    if isinstance(progress, bool):
        return progress
    if isinstance(progress, str) and progress.strip().lower() in PROGRESS_KINDS:
        return progress.strip().lower() != "none"
    raise ConfigError(f"progress={progress!r}: use True, False, 'text', 'notebook' or 'none' "
                      "(the view of a Dask computation is made in the notebook, not passed in).")


def lazy_generate(source: Any, spec: RunSpec, config: Any, meta: Any, progress: Any,
                  **options: Any) -> Any:
    """One ``map_partitions`` over ``source``, its computations announced to the live view."""
    token = tokenize(source._name, spec, source.npartitions)
    spec = spec.replace(token=token)
    if spec.report:
        kind = progress if isinstance(progress, bool) else progress.strip().lower()
        display = live.Display(kind, label=LABEL, npartitions=source.npartitions,
                               heartbeat_s=config.batch.heartbeat_s, stall_s=config.batch.stall_s)
        live.hub().register(token, display, _client())
    return source.map_partitions(generate_partition, spec, meta=meta, enforce_metadata=False,
                                 **options)


_DOC_OPTIONS = """
        Arguments as in ``DataFrame.minima.generate`` (``system``, ``model``, ``temperature``,
        ``max_tokens``, ``extra``, ``details``, ``force_refresh``, ``name``, ``backend``), plus:
        ``rpm`` the budget of the WHOLE computation (default: the config's rpm), shared by every
        worker through the scheduler; ``key_env`` the environment variable workers read the
        API key from (default ``OPENAI_API_KEY``); ``local_cache=True`` gives each worker a
        cache under its own local directory (several hosts: bring the rows home with
        ``minima_nb.dask.collect_caches``); ``progress`` shows the computation's rows live: a
        widget in a notebook and a heartbeat line elsewhere (True), ``"text"``/``"notebook"``
        to choose, ``False`` for no view and no progress events.
"""


@dd.extensions.register_dataframe_accessor("minima")
class DaskFrameAccessor:
    """``ddf.minima``: the pandas accessor's ``generate`` over a Dask DataFrame, lazily."""

    def __init__(self, collection: dd.DataFrame) -> None:
        self._obj = collection

    def generate(self, prompt: Any, *, backend: Any = None, system: str | None = None,
                 model: str | None = None, temperature: float | None = None,
                 max_tokens: int | None = None, extra: Mapping[str, Any] | None = None,
                 details: bool = False, force_refresh: bool = False,
                 name: Hashable | None = None, rpm: int | None = None,
                 key_env: str | None = None, local_cache: bool = False,
                 progress: bool | str = True) -> dd.Series | dd.DataFrame:
        """Answer every row's prompt, lazily: a ``dd.Series`` (or details ``dd.DataFrame``).

        Nothing is sent until it is computed (``.compute()``, ``dask.compute``,
        ``client.compute``, ``.persist()``), which shows one live bar of rows across the
        cluster. Equal, partition by partition, to ``df.minima.generate`` on the same rows.
        """
        meta = self._obj._meta
        system = check_system(system)
        _, default_name = frame_slots(meta, prompt, system)  # a wrong column/template fails now
        name = default_name if name is None else name
        spec, config = build_spec(prompt=prompt, system=system, name=name, details=details,
                                  force_refresh=force_refresh, backend=backend, rpm=rpm,
                                  key_env=key_env, local_cache=local_cache, progress=progress,
                                  params={"model": model, "temperature": temperature,
                                          "max_tokens": max_tokens, "extra": extra})
        columns = [prompt] if prompt in meta.columns else _template_fields(prompt)
        return lazy_generate(self._obj[columns], spec, config, _meta(meta.index, name, details),
                             progress, align_dataframes=False)

    generate.__doc__ = (generate.__doc__ or "") + _DOC_OPTIONS

    def sweep(self, prompt: Any, *, backend: Any = None, system: str | None = None,
              progress: bool | str = True, force_refresh: bool = False, rpm: int | None = None,
              key_env: str | None = None, local_cache: bool = False,
              **grid: Any) -> dd.DataFrame:
        """Every row under every combination of ``grid``, lazily: ``df.minima.sweep`` per partition.

        A ``dd.DataFrame`` with the pandas sweep's columns (``row``, ``model``, the grid keys,
        the details columns); each partition's rows come out together, its index restarting
        at 0 (``row`` holds the original label). ``backend``, ``rpm``, ``key_env``,
        ``local_cache`` and ``progress`` as in ``generate``; typed answers (``schema=``) are
        not offered on Dask.
        """
        meta = self._obj._meta
        system = check_system(system)
        frame_slots(meta, prompt, system)  # a wrong column/template fails now
        plain_grid = tuple((key, tuple(value) if _listlike(value) else value)
                           for key, value in grid.items())
        spec, config = build_spec(prompt=prompt, system=system, name=None, details=True,
                                  force_refresh=force_refresh, backend=backend, rpm=rpm,
                                  key_env=key_env, local_cache=local_cache, progress=progress,
                                  params={})
        spec = spec.replace(grid=plain_grid)
        # The meta: the sweep of the collection's fake rows (real dtypes), with no row left.
        fake = self._obj._meta_nonempty
        job = Sweep(fake, [None] * len(fake), dict(plain_grid), config.model)
        sweep_meta = job.shape([None] * len(job.slots), True)[0].iloc[:0]
        columns = [prompt] if prompt in meta.columns else _template_fields(prompt)
        return lazy_generate(self._obj[columns], spec, config, sweep_meta, progress,
                             align_dataframes=False)


def _listlike(value: Any) -> bool:
    return isinstance(value, (list, tuple, range, pd.Index, pd.Series)) or (
        hasattr(value, "tolist") and getattr(value, "ndim", 0) == 1)


@dd.extensions.register_series_accessor("minima")
class DaskSeriesAccessor:
    """``ddf["prompt"].minima``: the Series is the prompt column (strings or message lists)."""

    def __init__(self, collection: dd.Series) -> None:
        self._obj = collection

    def generate(self, *, backend: Any = None, system: str | None = None,
                 model: str | None = None, temperature: float | None = None,
                 max_tokens: int | None = None, extra: Mapping[str, Any] | None = None,
                 details: bool = False, force_refresh: bool = False,
                 name: Hashable | None = None, rpm: int | None = None,
                 key_env: str | None = None, local_cache: bool = False,
                 progress: bool | str = True) -> dd.Series | dd.DataFrame:
        """Answer each value, lazily; see ``DataFrame.minima.generate``."""
        meta = self._obj._meta
        system = check_system(system)
        column_slots(meta.tolist(), meta.index, meta.name, system)
        name = meta.name if name is None else name
        spec, config = build_spec(prompt=None, system=system, name=name, details=details,
                                  force_refresh=force_refresh, backend=backend, rpm=rpm,
                                  key_env=key_env, local_cache=local_cache, progress=progress,
                                  params={"model": model, "temperature": temperature,
                                          "max_tokens": max_tokens, "extra": extra})
        return lazy_generate(self._obj, spec, config, _meta(meta.index, name, details), progress)

    generate.__doc__ = (generate.__doc__ or "") + _DOC_OPTIONS


__all__ = ["DETAIL_DTYPES", "DaskFrameAccessor", "DaskSeriesAccessor"]
