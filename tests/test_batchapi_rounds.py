"""Rows out of rounds: failed for good, or sent through the live path with ``fallback="live"``.

Against the mock's ``expire`` fault over a real socket: each expiring batch answers half its
lines, so 12 rows with two expiring rounds leave 3 rows unanswered after ``max_rounds=2``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from _batchapi import FAST, KEY, make_backend, requests

from minima_nb.batch import BatchJob
from minima_nb.errors import ConfigError
from minima_nb.testing import MockServer, mock_answer
from minima_nb.types import MinimaLlmFailure, MinimaLlmResponse

PROMPTS = [f"expiring {i}" for i in range(12)]


def _answer(prompt: str) -> str:
    return mock_answer([{"role": "user", "content": prompt}], "mock-model")


def test_rows_out_of_rounds_fail_as_expired_without_the_fallback(tmp_path: Path) -> None:
    async def main() -> None:
        async with MockServer(require_api_key=KEY, **FAST) as server:
            server.batches.script_batches(["expire", "expire"])
            backend = make_backend(server, tmp_path, max_rounds=2)
            job = await BatchJob.asubmit(backend, requests(PROMPTS), prefix="expire")
            await job.await_done(progress=False)
            results = job.result()
            failed = [r for r in results if isinstance(r, MinimaLlmFailure)]
            assert len(failed) == 3 and all(f.error_type == "BatchExpired" and f.retryable for f in failed)
            assert server.requests_total == 0 and server.batches.created == 2
            await backend.aclose()

    asyncio.run(main())


def test_fallback_live_sends_the_rows_out_of_rounds_through_the_normal_requests(tmp_path: Path) -> None:
    async def main() -> None:
        async with MockServer(require_api_key=KEY, **FAST) as server:
            server.batches.script_batches(["expire", "expire"])
            backend = make_backend(server, tmp_path, max_rounds=2)
            job = await BatchJob.asubmit(backend, requests(PROMPTS), prefix="expire", fallback="live")
            await job.await_done(progress=False)
            results = job.result()
            assert [getattr(r, "text", None) for r in results] == [_answer(p) for p in PROMPTS]
            assert all(isinstance(r, MinimaLlmResponse) for r in results)
            assert server.requests_total == 3 and server.batches.created == 2  # only the 3 left went live
            assert job.info()["state"] == "completed" and job.info()["done"] == 12
            server.reset_counts()
            again = await backend.run_batched(requests(PROMPTS), progress=False)
            assert [r.text for r in again] == [_answer(p) for p in PROMPTS] and server.requests_total == 0
            await backend.aclose()

    asyncio.run(main())


def test_a_job_opened_by_id_sends_its_live_rows_from_its_input_files(tmp_path: Path) -> None:
    """A row marked live by one process is sent by the next (read back from its input line,
    with the same cache key), whatever that process's own fallback setting."""

    async def main() -> None:
        async with MockServer(require_api_key=KEY, **FAST) as server:
            server.batches.script_batches(["expire", "expire"])
            backend = make_backend(server, tmp_path, max_rounds=2)
            job = await BatchJob.asubmit(backend, requests(PROMPTS), prefix="expire", fallback="live")
            for _ in range(400):  # step until the rows are marked live, without sending them
                job._send_live = _nothing  # type: ignore[method-assign]
                await job.astep()
                if job.state.items_in(job.job_id, "live"):
                    break
                await asyncio.sleep(0.01)
            assert len(job.state.items_in(job.job_id, "live")) == 3 and server.requests_total == 0
            reopened = BatchJob.open(job.job_id, backend)
            await reopened.await_done(progress=False)
            assert server.requests_total == 3 and reopened.info()["done"] == 12
            server.reset_counts()
            again = await backend.run_batched(requests(PROMPTS), progress=False)
            assert [r.text for r in again] == [_answer(p) for p in PROMPTS] and server.requests_total == 0
            await backend.aclose()

    asyncio.run(main())


async def _nothing() -> None:
    return None


def test_an_unknown_fallback_says_the_choices(tmp_path: Path) -> None:
    with MockServer() as server:
        backend = make_backend(server, tmp_path)
        with pytest.raises(ConfigError, match="'none'.*'live'"):
            BatchJob.submit(backend, requests(["x"]), fallback="sometimes")
        backend.close()
