"""``BatchJob``: one set of prompts as provider batches: submit, poll, ingest, re-queue, cancel, resume.

Everything a job knows is in the state file (:mod:`.state`), so ``BatchJob.open(job_id)`` in
another process (or after a crash) carries on where the last one stopped. One *step* looks at
every chunk once, concurrently (a slow poll never holds up the others): written files are
uploaded, uploaded ones get a batch (adopting, after an ambiguous failure, the batch that
carries their submission id), running batches are polled, finished ones downloaded into the
cache, lost and retryable rows are written into a new round. :meth:`BatchJob.await_done`
repeats steps with a backoff (honouring ``Retry-After``) until the job is final. Interrupting a
wait stops the waiting only: the remote batches keep running, and the message says how to
resume or cancel (``on_interrupt="cancel"`` cancels instead).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ...cache import PromptCache
from ...errors import ConfigError, MinimaError, RateLimited
from ...types import (
    MinimaLlmRequest,
    MinimaLlmResult,
)
from .chunks import ChunkLimits, keys_of, write_chunks
from .client import TERMINAL, AmbiguousCreate, BatchClient, BatchLost
from .ingest import ingest_chunk
from .results import DONE_CHUNKS, job_results
from .rounds import check_fallback, next_round, send_live
from .state import FINAL_JOB_STATES, BatchState, state_path
from .waiting import Waiting

__all__ = ["BatchJob", "ENDPOINT"]

ENDPOINT = "/v1/chat/completions"
_MAX_LAG_POLLS = 3  # a completed batch without an output file id is polled this often before trusting it


def _fingerprint(prefix: str, keys: Iterable[str]) -> str:
    digest = hashlib.sha256(prefix.encode() + b"\0")
    for key in keys:
        digest.update(key.encode())
    return digest.hexdigest()


class BatchJob(Waiting):
    """A provider batch job of this cache (see the module docstring). Build one with
    :meth:`submit`/:meth:`asubmit` (or ``df.minima.submit``), or :meth:`open` an existing one."""

    def __init__(self, job_id: str, config: Any, cache: PromptCache, *, state: BatchState | None = None,
                 requests: Sequence[MinimaLlmRequest] | None = None, keys: Sequence[str] | None = None,
                 shaper: Callable[[list[Any]], Any] | None = None, on_interrupt: str = "wait",
                 fallback: str = "none", backend: Any = None,
                 check: Callable[[str], str | None] | None = None) -> None:
        if on_interrupt not in ("wait", "cancel"):
            raise ConfigError(f"on_interrupt={on_interrupt!r}: use 'wait' (leave the batches running) or 'cancel'")
        self.job_id, self.config, self.cache = job_id, config, cache
        self.state = state or BatchState.of(config)
        self._requests, self._keys, self._shaper, self.on_interrupt = requests, keys, shaper, on_interrupt
        self.fallback, self.backend = check_fallback(fallback), backend
        self.check = check if check is not None else _stored_check(self.state.job(job_id))
        self.client = BatchClient(config.base_url, config.api_key, timeout_s=config.timeout_s,
                                  purpose=config.parasail.upload_purpose)
        self.workdir = state_path(config).parent / "minima_batches" / job_id

    def __repr__(self) -> str:
        row = self.state.job(self.job_id) or {}
        return f"BatchJob({self.job_id!r}, prefix={row.get('prefix')!r}, state={row.get('state')!r})"

    # -- making and finding jobs --

    @classmethod
    async def asubmit(cls, backend: Any, requests: Sequence[MinimaLlmRequest], *, prefix: str | None = None,
                      shaper: Callable[[list[Any]], Any] | None = None, on_interrupt: str = "wait",
                      reattach: bool = True, fallback: str = "none",
                      check: Callable[[str], str | None] | None = None,
                      answer_schema: dict[str, Any] | None = None) -> BatchJob:
        """Write and submit the uncached ``requests`` as batches; returns once the first step ran.

        The same prompts with the same prefix as a job still running reattach to that job
        instead of submitting again (``reattach=False`` forces a new job). ``fallback="live"``
        sends the rows still unanswered after ``parasail.max_rounds`` rounds (expired, lost,
        429/5xx) through ``backend``'s normal, full-price requests instead of failing them.
        ``check`` judges each answer before it is cached (a schema's check: a refused answer is
        asked again with a new seed, up to ``max_attempts``); ``answer_schema``
        (``{"schema": <JSON schema>, "mode": "json"|"prompt"}``) is stored with the job so that
        a process that opens it by id checks the answers against it too.
        """
        config, cache = backend.config, backend.cache
        check_fallback(fallback)
        if cache is None:
            raise ConfigError("provider batch jobs store their answers in the prompt cache: set cache_dir (CACHE_DIR).")
        prefix = prefix or config.parasail.effective_prefix or "minima"
        rows = list(keys_of(requests, config.model, config.cache_namespace))
        keys = [key for _, _, key in rows]
        fingerprint = _fingerprint(prefix, keys)
        state = BatchState.of(config)
        found = state.find_job(fingerprint) if reattach else None
        if found is not None and (state.job(found) or {}).get("state") != "preparing":
            job = cls(found, config, cache, state=state, requests=requests, keys=keys, shaper=shaper,
                      on_interrupt=on_interrupt, fallback=fallback, backend=backend, check=check)
            print(f"minima_nb: reattached to batch job {found} (same prompts, prefix {prefix!r})", file=sys.stderr)
            return job
        if found is not None:  # a job killed while its files were being written: nothing was sent
            state.update_job(found, state="failed", finished_at=time.time(), note="interrupted while preparing")
        job_id = f"{prefix[:24]}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        state.create_job(job_id, prefix=prefix, fingerprint=fingerprint, base_url=_safe(config.base_url),
                         endpoint=ENDPOINT, completion_window=config.parasail.completion_window,
                         rows=len(rows), prompts=0,
                         answer_schema=None if answer_schema is None else json.dumps(answer_schema))
        job = cls(job_id, config, cache, state=state, requests=requests, keys=keys, shaper=shaper,
                  on_interrupt=on_interrupt, fallback=fallback, backend=backend, check=check)
        cached = await asyncio.to_thread(cache.get_texts, dict.fromkeys(keys), count_misses=False)
        todo = (row for row in rows if row[2] not in cached)
        limits = ChunkLimits(config.parasail.max_batch_size, config.parasail.max_batch_bytes)
        _, _, unique = await asyncio.to_thread(write_chunks, state, job_id, job.workdir, todo, limits)
        state.update_job(job_id, state="running", prompts=unique)
        await job.astep()
        return job

    @classmethod
    def submit(cls, backend: Any, requests: Sequence[MinimaLlmRequest], **options: Any) -> BatchJob:
        """:meth:`asubmit` from sync code."""
        from ...engine.sync import run_sync

        return run_sync(cls.asubmit(backend, requests, **options))

    @classmethod
    def open(cls, job_id: str, backend: Any = None, *, config: Any = None, fallback: str = "none") -> BatchJob:
        """An existing job of this state file, e.g. after a restart: ``BatchJob.open(id).wait()``.

        Rows already marked for the live path are sent live whatever ``fallback`` says here.
        """
        if backend is None and config is None:
            from ...config import MinimaLlmConfig

            config = MinimaLlmConfig.from_env()
        config = backend.config if backend is not None else config
        cache = backend.cache if backend is not None and backend.cache is not None else _open_cache(config)
        state = BatchState.of(config)
        if state.job(job_id) is None:
            raise MinimaError(f"no batch job {job_id!r} in {state.path}; `minima-nb batch list` shows the jobs")
        return cls(job_id, config, cache, state=state, fallback=fallback, backend=backend)

    # -- status --

    def info(self) -> dict[str, Any]:
        """The job as recorded: its row, per-chunk statuses and per-state row counts (no remote call)."""
        row = self.state.job(self.job_id) or {}
        chunks = self.state.chunks(self.job_id)
        counts = self.state.counts(self.job_id)
        return {**row, "batches": [{k: c[k] for k in ("chunk_id", "round", "batch_id", "status", "remote_status",
                                                        "lines", "completed", "failed", "last_error")}
                                   for c in chunks],
                "done": counts.get("done", 0), "failed": counts.get("failed", 0),
                "pending": counts.get("queued", 0) + counts.get("requeue", 0)}

    async def astatus(self) -> dict[str, Any]:
        """One step (poll, download what finished), then :meth:`info`."""
        await self.astep()
        return self.info()

    def status(self) -> dict[str, Any]:
        """:meth:`astatus` from sync code."""
        from ...engine.sync import run_sync

        return run_sync(self.astatus())

    @property
    def final(self) -> bool:
        """Whether the job is over (completed, cancelled or failed)."""
        return (self.state.job(self.job_id) or {}).get("state") in FINAL_JOB_STATES

    # -- one step --

    async def astep(self) -> float | None:
        """Look at every chunk once; returns a Retry-After the provider asked for, if any."""
        try:
            return await self._step()
        finally:
            await self.client.aclose()  # sessions are loop-bound; a job may be driven from several loops

    async def _step(self) -> float | None:
        job = self.state.job(self.job_id)
        if job is None or job["state"] in FINAL_JOB_STATES:
            return None
        if job["state"] == "preparing":  # killed while its files were written: nothing was sent
            self.state.update_job(self.job_id, state="failed", finished_at=time.time(),
                                  note="interrupted while preparing (nothing was sent); run it again")
            return None
        cancelling = job["cancel_requested_at"] is not None
        work = []
        for chunk in self.state.chunks(self.job_id):
            status = chunk["status"]
            if status == "writing":  # a later round torn by a crash: send its rows again
                self.state.requeue_chunk(chunk["chunk_id"])
                self.state.update_chunk(chunk["chunk_id"], status="discarded")
            elif cancelling and status in ("written", "uploading", "uploaded"):
                await asyncio.to_thread(ingest_chunk, self.state, self.cache, self.config.cache_namespace, chunk,
                                        None, None, missing="cancelled")
                self.state.update_chunk(chunk["chunk_id"], status="cancelled")
            elif status in ("written", "uploading", "uploaded", "creating"):
                work.append(self._send(chunk))
            elif status in ("submitted", "cancel_requested", "finished"):
                work.append(self._follow(chunk, cancelling))
        retry_after = None
        for outcome, chunk_work in zip(await asyncio.gather(*work, return_exceptions=True), work, strict=True):
            del chunk_work
            if isinstance(outcome, RateLimited):
                retry_after = max(retry_after or 0.0, outcome.retry_after or 0.0)
            elif isinstance(outcome, asyncio.CancelledError):
                raise outcome
            elif isinstance(outcome, BaseException):
                self.state.update_job(self.job_id, note=f"{type(outcome).__name__}: {str(outcome)[:300]}")
                if not getattr(outcome, "retryable", False) and not isinstance(outcome, AmbiguousCreate):
                    raise outcome  # a 4xx, a bug: polling again would not help
        if not cancelling:
            await asyncio.to_thread(next_round, self.state, self.job_id, self.config, self.workdir, self.fallback)
            await self._send_live()
        self._finish_if_done(cancelling)
        return retry_after

    async def _send(self, chunk: dict[str, Any]) -> None:
        chunk_id, state = chunk["chunk_id"], self.state
        if chunk["status"] in ("written", "uploading") or not chunk["file_id"]:
            state.update_chunk(chunk_id, status="uploading")
            uploaded = await self.client.upload(chunk["path"], Path(chunk["path"]).name)
            state.update_chunk(chunk_id, status="uploaded", file_id=uploaded["id"])
            chunk = {**chunk, "file_id": uploaded["id"]}
        submission = chunk["submission_id"]
        if submission and await self._adopt(chunk_id, submission):
            return  # created earlier (a crash or an ambiguous answer); never create it twice
        submission = submission or uuid.uuid4().hex
        state.update_chunk(chunk_id, status="creating", submission_id=submission)
        metadata = {"minima_job": self.job_id[:500], "minima_submission": submission,
                    "minima_prefix": str((state.job(self.job_id) or {}).get("prefix") or "")[:500]}
        try:
            batch = await self.client.create(chunk["file_id"], endpoint=ENDPOINT, metadata=metadata,
                                             completion_window=self.config.parasail.completion_window)
        except AmbiguousCreate as exc:
            state.update_chunk(chunk_id, last_error=str(exc)[:300])
            await self._adopt(chunk_id, submission)  # else the next step looks again, then creates
            return
        self._record(chunk_id, batch, status="submitted")

    async def _adopt(self, chunk_id: int, submission: str) -> bool:
        for batch in await self.client.list_all():
            if (batch.get("metadata") or {}).get("minima_submission") == submission:
                self._record(chunk_id, batch, status="submitted")
                return True
        return False

    def _record(self, chunk_id: int, batch: dict[str, Any], **fields: Any) -> None:
        counts = batch.get("request_counts") or {}
        self.state.update_chunk(chunk_id, batch_id=batch.get("id"), remote_status=batch["status"],
                                total=counts.get("total"), completed=counts.get("completed"),
                                failed=counts.get("failed"), **fields)

    async def _follow(self, chunk: dict[str, Any], cancelling: bool) -> None:
        chunk_id, state = chunk["chunk_id"], self.state
        if chunk["status"] != "finished":
            if cancelling and chunk["status"] == "submitted":
                state.update_chunk(chunk_id, status="cancel_requested")  # recorded, then sent
                await self.client.cancel(chunk["batch_id"])  # refused when it finished meanwhile
            try:
                batch = await self.client.retrieve(chunk["batch_id"])
            except BatchLost:
                state.requeue_chunk(chunk_id)
                state.update_chunk(chunk_id, status="discarded", remote_status="lost")
                return
            self._record(chunk_id, batch, polls=(chunk["polls"] or 0) + 1)
            if batch["status"] not in TERMINAL:
                return
            lagging = (batch["status"] == "completed" and batch["output_file_id"] is None
                       and (batch.get("request_counts") or {}).get("completed", 1) != 0)
            if lagging and (chunk["lag_polls"] or 0) < _MAX_LAG_POLLS:
                state.update_chunk(chunk_id, lag_polls=(chunk["lag_polls"] or 0) + 1)
                return
            errors = (batch.get("errors") or {}).get("data") or []
            state.update_chunk(chunk_id, status="finished", output_file_id=batch["output_file_id"],
                               error_file_id=batch["error_file_id"],
                               last_error="; ".join(str(e.get("message")) for e in errors)[:500] or None)
            chunk = state.chunk(chunk_id)
        await self._ingest(chunk)

    async def _send_live(self) -> None:
        """The rows out of rounds marked ``live``: through the backend's normal requests."""
        if not self.state.items_in(self.job_id, "live"):
            return
        if self.backend is None:
            raise MinimaError(f"batch job {self.job_id} has rows to send through the live path (fallback='live'), "
                              f"which needs a backend: BatchJob.open({self.job_id!r}, backend)")
        known = list(zip(self._keys, self._requests, strict=True)) if self._keys and self._requests else []
        await send_live(self.state, self.job_id, self.backend, known, self.check)

    async def _ingest(self, chunk: dict[str, Any]) -> None:
        paths: list[str | None] = []
        for name in ("output_file_id", "error_file_id"):
            file_id = chunk[name]
            if file_id:
                target = self.workdir / f"{chunk['chunk_id']}-{name.split('_')[0]}.jsonl"
                await self.client.download(file_id, target)
                paths.append(str(target))
            else:
                paths.append(None)
        remote = chunk["remote_status"]
        batch_error = (chunk["last_error"] or "the batch failed validation") if remote == "failed" else None
        await asyncio.to_thread(ingest_chunk, self.state, self.cache, self.config.cache_namespace, chunk,
                                paths[0], paths[1], missing="cancelled" if remote == "cancelled" else "requeue",
                                batch_error=batch_error, check=self.check)
        self.state.update_chunk(chunk["chunk_id"], status="ingested")

    def _finish_if_done(self, cancelling: bool) -> None:
        chunks = self.state.chunks(self.job_id)
        counts = self.state.counts(self.job_id)
        if any(c["status"] not in DONE_CHUNKS for c in chunks) or any(counts.get(s) for s in ("queued", "requeue",
                                                                                              "live")):
            return
        self.state.update_job(self.job_id, state="cancelled" if cancelling else "completed", finished_at=time.time())
        shutil.rmtree(self.workdir, ignore_errors=True)  # every remote batch is terminal and ingested

    # -- results --

    def results(self) -> list[MinimaLlmResult]:
        """One result per submitted request, in order: the cached answer, or the row's failure."""
        if self._requests is None or self._keys is None:
            raise MinimaError("this BatchJob was opened by id: its answers are in the cache (ask again with "
                              "generate(), which serves them with zero requests)")
        if not self.final:
            raise MinimaError(f"batch job {self.job_id} is still running: call wait() first")
        return job_results(self.state, self.cache, self.job_id, self._requests, self._keys, self.config.model)

    def result(self) -> Any:
        """What ``generate()`` would have returned (a list of results without a notebook shaper)."""
        results = self.results()
        return self._shaper(results) if self._shaper is not None else results


def _stored_check(job: dict[str, Any] | None) -> Callable[[str], str | None] | None:
    """The answer check of a job submitted with a schema (its JSON schema, stored with it)."""
    spec = json.loads(job["answer_schema"]) if job and job.get("answer_schema") else None
    if spec is None:
        return None
    from ...notebook.schema import AnswerSchema  # pandas: only for a job that has a schema

    return AnswerSchema(spec["schema"], spec.get("mode", "json")).check


def _open_cache(config: Any) -> PromptCache:
    if not config.cache_dir:
        raise ConfigError("batch jobs keep their answers in the prompt cache: set cache_dir (CACHE_DIR).")
    return PromptCache(config.cache_dir)


def _safe(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))  # no user:password@
