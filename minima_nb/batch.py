"""Provider batch jobs (also minima-llm's ``minima_llm.batch`` import path): the public names.

``BatchJob`` (submit, status, wait, result, cancel, open by id), minima-llm's
``batch_status_overview``, ``cancel_batch``, ``cancel_all_batches``, ``cancel_all_local_batches``,
and ``batch_jobs()`` (a DataFrame of the jobs). The code lives in
``minima_nb.integrations.batchapi``.
"""

from __future__ import annotations

from .integrations.batchapi.job import BatchJob
from .integrations.batchapi.manage import (
    batch_jobs,
    batch_status_overview,
    cancel_all_batches,
    cancel_all_local_batches,
    cancel_batch,
)
from .integrations.batchapi.mode import BatchCollector
from .types import BatchPendingResponse

__all__ = ["BatchCollector", "BatchJob", "BatchPendingResponse", "batch_jobs", "batch_status_overview",
           "cancel_all_batches", "cancel_all_local_batches", "cancel_batch"]
