"""The jobs of a state file as a whole: minima-llm's overview and cancel functions, ``batch_jobs()``.

``batch_status_overview(config)``, ``cancel_batch(batch_id, config)``,
``cancel_all_batches(config, prefix)`` and ``cancel_all_local_batches(config)`` keep the
predecessor's names and arguments (they print, as before) but work: a cancel is recorded, sent,
followed through ``cancelling`` and its partial output downloaded; ``cancel_all_batches`` also
cancels remote batches tagged with the prefix that the local state does not know (another
machine's). Local state is never deleted.
"""

from __future__ import annotations

import asyncio
import datetime
import sys
from typing import Any

from ...config import MinimaLlmConfig
from .client import TERMINAL, BatchClient
from .job import BatchJob
from .state import FINAL_JOB_STATES, BatchState

__all__ = ["batch_job_rows", "batch_jobs", "batch_status_overview", "cancel_all_batches", "cancel_all_local_batches",
           "cancel_batch"]


def _config(config: MinimaLlmConfig | None) -> MinimaLlmConfig:
    return config if config is not None else MinimaLlmConfig.from_env()


def _run(coro: Any) -> Any:
    from ...engine.sync import run_sync

    return run_sync(coro)


def batch_job_rows(config: MinimaLlmConfig | None = None, prefix: str | None = None) -> list[dict[str, Any]]:
    """One dict per job of the state file (newest first): id, prefix, state, counts, created."""
    state = BatchState.of(_config(config))
    rows = []
    for job in state.jobs(prefix):
        counts = state.counts(job["job_id"])
        chunks = state.chunks(job["job_id"])
        rows.append({"job_id": job["job_id"], "prefix": job["prefix"], "state": job["state"],
                     "batches": len([c for c in chunks if c["batch_id"]]), "rows": job["rows"],
                     "prompts": job["prompts"], "done": counts.get("done", 0), "failed": counts.get("failed", 0),
                     "pending": counts.get("queued", 0) + counts.get("requeue", 0),
                     "created": datetime.datetime.fromtimestamp(job["created_at"]),
                     "finished": (datetime.datetime.fromtimestamp(job["finished_at"])
                                  if job["finished_at"] else None)})
    return rows


def batch_status_overview(config: MinimaLlmConfig | None = None) -> list[dict[str, Any]]:
    """Print every local job with its batches' remote status (one poll each); returns the rows."""
    config = _config(config)
    state = BatchState.of(config)
    jobs = state.jobs()
    if not jobs:
        print(f"No batch jobs in {state.path}.")
        return []
    print(f"{len(jobs)} batch job(s) in {state.path}:")
    for job in jobs:
        if job["state"] not in FINAL_JOB_STATES:
            try:
                BatchJob.open(job["job_id"], config=config).status()
            except Exception as exc:  # noqa: BLE001 - an overview reports, it does not stop
                print(f"  (could not poll {job['job_id']}: {type(exc).__name__}: {exc})")
    rows = batch_job_rows(config)
    for row in rows:
        print(f"  {row['job_id']}  prefix={row['prefix']!r}  {row['state']}  {row['done']:,} done, "
              f"{row['failed']:,} failed, {row['pending']:,} pending of {row['prompts'] or 0:,} prompts  "
              f"(created {row['created']:%Y-%m-%d %H:%M:%S})")
        for chunk in state.chunks(row["job_id"]):
            print(f"      batch {chunk['batch_id'] or '<not created>'}: {chunk['remote_status'] or chunk['status']}, "
                  f"{chunk['completed'] or 0:,}/{chunk['lines'] or 0:,} lines")
    return rows


def cancel_batch(batch_id: str, config: MinimaLlmConfig | None = None) -> None:
    """Cancel one remote batch (its job's other batches keep running); waits for ``cancelled``."""
    config = _config(config)
    state = BatchState.of(config)
    chunk = state.chunk_by_batch(batch_id)
    client = BatchClient(config.base_url, config.api_key, timeout_s=config.timeout_s)

    async def cancel() -> str:
        try:
            if chunk is not None:
                state.update_chunk(chunk["chunk_id"], status="cancel_requested")
            await client.cancel(batch_id)
            for _ in range(600):
                batch = await client.retrieve(batch_id)
                if batch["status"] in TERMINAL:
                    return str(batch["status"])
                await asyncio.sleep(min(config.parasail.poll_interval_s, 5.0))
            return str(batch["status"])
        finally:
            await client.aclose()

    status = _run(cancel())
    print(f"Batch {batch_id}: {status}.")
    if chunk is not None:
        BatchJob.open(chunk["job_id"], config=config).status()  # downloads its partial output


def cancel_all_batches(config: MinimaLlmConfig | None, prefix: str) -> list[str]:
    """Cancel every job whose prefix starts with ``prefix``, and any remote batch tagged with it."""
    config = _config(config)
    state = BatchState.of(config)
    cancelled = []
    for job in state.jobs(prefix):
        if job["state"] not in FINAL_JOB_STATES:
            BatchJob.open(job["job_id"], config=config).cancel()
            cancelled.append(job["job_id"])
            print(f"Cancelled job {job['job_id']}.")
    client = BatchClient(config.base_url, config.api_key, timeout_s=config.timeout_s)

    async def strays() -> list[str]:
        try:
            found = []
            for batch in await client.list_all():
                tag = str((batch.get("metadata") or {}).get("minima_prefix") or "")
                if tag.startswith(prefix) and batch["status"] not in TERMINAL and state.chunk_by_batch(batch["id"]) is None:
                    await client.cancel(batch["id"])
                    found.append(str(batch["id"]))
            return found
        finally:
            await client.aclose()

    for batch_id in _run(strays()):
        print(f"Cancelled remote batch {batch_id} (tagged {prefix!r}, not in the local state).", file=sys.stderr)
        cancelled.append(batch_id)
    if not cancelled:
        print(f"No running batch jobs with prefix {prefix!r}.")
    return cancelled


def cancel_all_local_batches(config: MinimaLlmConfig | None = None) -> list[str]:
    """Cancel every running job of the local state file."""
    config = _config(config)
    cancelled = []
    for job in BatchState.of(config).jobs():
        if job["state"] not in FINAL_JOB_STATES:
            BatchJob.open(job["job_id"], config=config).cancel()
            cancelled.append(job["job_id"])
            print(f"Cancelled job {job['job_id']}.")
    if not cancelled:
        print("No running batch jobs.")
    return cancelled


def batch_jobs(config: MinimaLlmConfig | None = None, prefix: str | None = None) -> Any:
    """A DataFrame of this cache's batch jobs (newest first): id, prefix, state, counts, created.

    ``config`` defaults to the session backend's (``minima_nb.configure``), else the environment.
    """
    import pandas as pd

    if config is None:
        from ...notebook.session import get_backend

        config = get_backend().config
    columns = ["job_id", "prefix", "state", "batches", "rows", "prompts", "done", "failed", "pending",
               "created", "finished"]
    return pd.DataFrame(batch_job_rows(config, prefix), columns=columns)
