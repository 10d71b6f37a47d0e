"""The partition function: one pandas partition through the pandas accessor's own job.

``generate_partition(part, spec)`` runs on a worker (or a thread of the threaded scheduler). It
turns the partition into one prompt per row with the accessor's code (columns, templates,
message lists, missing prompts), runs them as one batch on this process's engine
(:mod:`.worker`) and shapes the answers exactly as ``df.minima.generate`` does, aligned to the
partition's index (with a grid: the pandas ``sweep``'s long frame). Failed rows are values
(``<NA>``, with their reason in ``error`` when ``details=True``), never a task error that would lose the partition: a batch that aborts
(a 401 on every row, too many failures) and a worker without a key both come back as rows
failed with the reason. Counts go out as progress events while the batch runs (:mod:`.progress`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ...errors import BatchAborted
from ...notebook.jobs import DETAIL_DTYPES, Generation
from ...notebook.prompts import column_slots, frame_slots
from ...notebook.sweep import Sweep
from ...types import MinimaLlmFailure
from . import budget, progress, worker
from .settings import RunSpec

ABORTED = "BatchAborted"


def _this_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):  # the threaded scheduler: no worker
        return None


def job_for(part: pd.DataFrame | pd.Series, spec: RunSpec) -> Generation | Sweep:
    """The accessor's job for this partition: its prompts, index, name and request fields."""
    if spec.grid is not None:  # ddf.minima.sweep: every row under every grid combination
        slots, _ = frame_slots(part, spec.prompt, spec.system)
        return Sweep(part, slots, dict(spec.grid), spec.engine.get("model"))
    if isinstance(part, pd.Series):
        column = "<series>" if part.name is None else part.name
        slots = column_slots(part.tolist(), part.index, column, spec.system)
    else:
        slots, _ = frame_slots(part, spec.prompt, spec.system)
    return Generation(slots, part.index, spec.name, spec.request_params())


def generate_partition(part: pd.DataFrame | pd.Series, spec: RunSpec,
                       partition_info: dict[str, Any] | None = None) -> pd.Series | pd.DataFrame:
    """Answer one partition's prompts; the result equals the pandas accessor's on it.

    ``partition_info`` (given by dask) numbers the partition in its progress events.
    """
    job = job_for(part, spec)
    number = partition_info.get("number") if partition_info else None
    reporter = progress.reporter_for(len(job.slots), spec.token, number) if spec.report else None
    if reporter is not None:
        reporter.start()
    dask_worker = _this_worker()
    where = str(getattr(dask_worker, "address", "this process"))
    engine = worker.engine_for(
        spec.engine, budget_id=spec.budget.budget_id if spec.budget else None,
        local_directory=getattr(dask_worker, "local_directory", None), where=where)
    if isinstance(engine, str):  # no key on this worker: every row fails with how to fix it
        value = _all_failed(job, spec, "ConfigError", engine)
    else:
        if spec.budget is not None and dask_worker is not None:
            engine.pacer.share_budget(budget.permits_for(spec.budget, dask_worker))
        try:
            value, _ = job.run(engine, details=spec.details,
                               progress=reporter if reporter is not None else False,
                               force_refresh=spec.force_refresh)
        except BatchAborted as exc:
            value = _from_aborted(exc, spec)
    if reporter is not None:
        reporter.close("done")  # idempotent: the batch may have closed it already
    return value


def _all_failed(job: Generation | Sweep, spec: RunSpec, error_type: str, message: str) -> Any:
    model = spec.request_params().get("model") or spec.engine.get("model")
    results = [None if slot is None else MinimaLlmFailure(f"row-{i}", error_type, message, model=model)
               for i, slot in enumerate(job.slots)]
    value, _ = job.shape(results, spec.details)
    return value


def _from_aborted(exc: BatchAborted, spec: RunSpec) -> Any:
    """The rows that finished, and every other row failed with the abort's reason."""
    partial: pd.DataFrame = exc.partial
    never_ran = partial["text"].isna() & partial["error"].isna()
    partial.loc[never_ran, "error"] = f"{ABORTED}: {exc.message}"
    partial.loc[never_ran, "cached"] = False
    partial = partial.astype(DETAIL_DTYPES)
    if spec.details:
        return partial
    return partial["text"].rename(spec.name)
