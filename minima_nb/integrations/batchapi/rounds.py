"""Rounds: the rows a job sends again, and the live path for the rows out of rounds.

A row whose batch expired or was lost, or whose line failed with a 429/5xx or was missing, is
re-queued; each step writes the re-queued rows that have rounds left into new input files (a
new round, read back from the rows' first input file). A row out of rounds
(``parasail.max_rounds``) fails for good, or, with ``fallback="live"``, is sent through the
backend's normal requests: it is marked ``live`` in the state first, so a process killed
before its answer arrived sends it live again on resume (the cache keeps one answer). A row
whose answer the job's schema refused goes again with a new seed, up to ``max_attempts``
answers, then fails with the validation error (never live: the live path would ask again too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ...engine.validation import UNBOUNDED_ROUNDS, with_check
from ...types import MinimaLlmFailure, MinimaLlmRequest
from .chunks import ChunkLimits, custom_id_in, custom_id_of, read_lines, request_of_line, rewrite
from .ingest import MISMATCH
from .state import BatchState

__all__ = ["FALLBACKS", "next_round", "send_live"]

FALLBACKS = ("none", "live")


def check_fallback(fallback: str) -> str:
    """``fallback``, or a ConfigError saying the choices."""
    from ...errors import ConfigError

    if fallback not in FALLBACKS:
        raise ConfigError(f"fallback={fallback!r}: use 'none' (rows out of rounds fail) or 'live' "
                          "(they are sent through the normal, full-price requests)")
    return fallback


def next_round(state: BatchState, job_id: str, config: Any, workdir: Path, fallback: str) -> None:
    """Rows to send again: those with rounds left into new files; the others fail or go live.

    A row re-queued because its answer did not match the schema is asked again with a new seed
    until ``max_attempts`` answers in all (as on the live path), then fails with the last reason.
    """
    waiting = state.requeued(job_id)
    if not waiting:
        return
    limit = config.parasail.max_rounds
    answers = config.max_attempts if config.max_attempts > 0 else UNBOUNDED_ROUNDS
    mismatched = {key for key, _, _, _, kind in waiting if kind == MISMATCH}
    out_of_rounds = [(chunk, key) for key, chunk, _, rounds, _ in waiting
                     if rounds >= (answers if key in mismatched else limit)]
    state.give_up([entry for entry in out_of_rounds if entry[1] in mismatched])
    others = [entry for entry in out_of_rounds if entry[1] not in mismatched]
    if fallback == "live":
        state.set_state(others, "live")
    else:
        state.give_up(others)
    gone = {key for _, key in out_of_rounds}
    chunks = {c["chunk_id"]: c for c in state.chunks(job_id)}
    sources: dict[str, tuple[str, dict[str, tuple[int, str, int | None]]]] = {}
    for key, chunk, origin, rounds, _ in waiting:
        if key not in gone:
            first = chunks[origin]
            sources.setdefault(first["path"], (first["model"], {}))[1][custom_id_of(key)] = (
                chunk, key, rounds - 1 if key in mismatched else None)
    if sources:
        next_number = 1 + max(rounds for _, _, _, rounds, _ in waiting)
        limits = ChunkLimits(config.parasail.max_batch_size, config.parasail.max_batch_bytes)
        rewrite(state, job_id, workdir, sources, limits, next_number,
                (config.retry_temperature_max, config.retry_temperature_halflife))


def _from_lines(state: BatchState, job_id: str, wanted: dict[str, tuple[str, int]]) -> dict[str, MinimaLlmRequest]:
    """The requests of ``wanted`` (cache key -> (request id, first chunk)) read back from their
    first input files: the body is what was asked, so the request has the same cache key."""
    paths = {c["chunk_id"]: c["path"] for c in state.chunks(job_id)}
    by_path: dict[str, dict[str, str]] = {}
    for wanted_key, (_, origin) in wanted.items():
        by_path.setdefault(paths[origin], {})[custom_id_of(wanted_key)] = wanted_key
    found: dict[str, MinimaLlmRequest] = {}
    for path, ids in by_path.items():
        for line in read_lines(path):
            key = ids.get(custom_id_in(line))
            if key is not None:
                found[key] = request_of_line(line, wanted[key][0])[0]
    return found


async def send_live(state: BatchState, job_id: str, backend: Any,
                    known: Sequence[tuple[str, MinimaLlmRequest]] = (),
                    check: Callable[[str], str | None] | None = None) -> int:
    """Send the job's ``live`` rows through ``backend`` (its cache keeps the answers); how many.

    ``known`` are ``(cache key, request)`` pairs of the submitting process; other rows are read
    back from their input files (a job opened by id). ``check`` is the schema's answer check,
    run by the live path as in any ``generate(schema=...)``.
    """
    waiting = state.items_in(job_id, "live")
    if not waiting:
        return 0
    in_memory = dict(known)
    wanted = {key: (f"live-{i}", origin) for i, (key, _, origin, _, _) in enumerate(waiting) if key not in in_memory}
    requests = {**_from_lines(state, job_id, wanted), **in_memory} if wanted else in_memory
    rows = [(chunk, key, requests[key]) for key, chunk, _, _, _ in waiting if key in requests]
    results = await with_check(check, backend.run_batched([request for _, _, request in rows], progress=False))
    outcomes: list[tuple[int, str, str, int | None, str | None, str | None]] = []
    for (chunk, key, _), result in zip(rows, results, strict=True):
        if isinstance(result, MinimaLlmFailure):
            outcomes.append((chunk, key, "failed", result.status, result.error_type, result.message[:500]))
        else:
            outcomes.append((chunk, key, "done", 200, None, None))
    outcomes += [(chunk, key, "failed", None, "BatchLineMissing", "its input line is gone; ask again")
                 for key, chunk, _, _, _ in waiting if key not in requests]
    state.set_outcomes(outcomes)
    return len(rows)
