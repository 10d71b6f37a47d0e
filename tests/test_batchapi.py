"""Provider batch jobs against the mock's /v1/files and /v1/batches over a real socket.

Every test drives the real client, state file (SQLite in tmp_path) and prompt cache; the mock's
batch clock runs fast (``FAST``) so a 12-minute batch takes milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from _batchapi import FAST, KEY, make_backend, make_config, requests

from minima_nb.batch import BatchJob
from minima_nb.integrations.batchapi.chunks import ChunkLimits, custom_id_of, keys_of, write_chunks
from minima_nb.integrations.batchapi.client import BatchClient, BatchLost, api_url, normalise_batch
from minima_nb.integrations.batchapi.state import BatchState, state_path
from minima_nb.testing import MockServer, mock_answer
from minima_nb.types import BatchPendingResponse, MinimaLlmFailure, MinimaLlmResponse


def _answer(prompt: str) -> str:
    return mock_answer([{"role": "user", "content": prompt}], "mock-model")


async def _wait_status(client: BatchClient, batch_id: str, wanted: set[str]) -> dict:
    for _ in range(500):
        batch = await client.retrieve(batch_id)
        if batch["status"] in wanted:
            return batch
        await asyncio.sleep(0.01)
    raise AssertionError(f"batch {batch_id} never reached {wanted}")


# -- the mock and the client ------------------------------------------------------------------


def test_client_uploads_creates_polls_lists_and_downloads(tmp_path: Path) -> None:
    lines = [json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "mock-model", "messages": [{"role": "user", "content": f"p{i}"}]}})
             for i in range(5)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")

    async def main() -> None:
        async with MockServer(require_api_key=KEY, **FAST) as server:
            client = BatchClient(server.base_url, KEY)
            uploaded = await client.upload(tmp_path / "in.jsonl", "in.jsonl")
            ids = []
            for n in range(3):
                batch = await client.create(uploaded["id"], endpoint="/v1/chat/completions",
                                            completion_window="24h", metadata={"n": str(n)})
                assert batch["status"] == "validating"
                ids.append(batch["id"])
            done = await _wait_status(client, ids[0], {"completed"})
            assert done["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
            await client.download(done["output_file_id"], tmp_path / "out.jsonl")
            out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
            assert sorted(o["custom_id"] for o in out) == [f"c{i}" for i in range(5)]
            assert out[0]["response"]["body"]["choices"][0]["message"]["content"] == _answer("p0")
            first = await client.list_page(limit=1)
            second = await client.list_page(after=first["last_id"], limit=1)
            assert first["has_more"] and first["data"][0]["id"] == ids[2] and second["data"][0]["id"] == ids[1]
            assert {b["id"] for b in await client.list_all()} == set(ids)
            assert await client.cancel(ids[0]) is None  # already completed: refused
            with pytest.raises(BatchLost):
                await client.retrieve("batch_nope")
            await client.aclose()
            stranger = BatchClient(server.base_url, "sk-wrong")
            with pytest.raises(Exception, match="401") as caught:
                await stranger.retrieve(ids[0])
            assert "sk-wrong" not in str(caught.value)
            await stranger.aclose()

    asyncio.run(main())


def test_urls_statuses_and_file_ids_are_normalised(caplog: pytest.LogCaptureFixture) -> None:
    assert api_url("https://api.openai.com/v1", "files") == "https://api.openai.com/v1/files"
    assert api_url("https://api.openai.com/v1/", "files") == "https://api.openai.com/v1/files"
    assert api_url("https://api.openai.com", "batches") == "https://api.openai.com/v1/batches"
    assert api_url("https://api.groq.com/openai/v1", "files") == "https://api.groq.com/openai/v1/files"
    together = normalise_batch({"job": {"id": "b", "status": "IN_PROGRESS", "error_file_id": ""}, "warning": "x"})
    assert together["status"] == "in_progress" and together["error_file_id"] is None
    with caplog.at_level(logging.WARNING):
        assert normalise_batch({"id": "b", "status": "Thinking_Hard"})["status"] == "thinking_hard"
    assert "unknown" in caplog.text


def test_chunks_split_by_lines_bytes_and_model_and_keep_one_line_per_prompt(tmp_path: Path) -> None:
    state = BatchState(tmp_path / "state.db")
    state.create_job("j", prefix="p")
    reqs = requests([f"prompt {i % 25}" for i in range(60)]) + requests(["other"], model="mock-model-large")
    rows = list(keys_of(reqs, "mock-model", None))
    chunk_ids, seen, unique = write_chunks(state, "j", tmp_path / "files", rows, ChunkLimits(lines=10, bytes=10_000))
    assert (seen, unique) == (61, 26)
    chunks = state.chunks("j")
    assert [c["lines"] for c in chunks if c["model"] == "mock-model"] == [10, 10, 5]
    assert [c["lines"] for c in chunks if c["model"] == "mock-model-large"] == [1]
    ids = [json.loads(line)["custom_id"] for c in chunks for line in Path(c["path"]).read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 26
    assert all(len(i) <= 64 and i.replace("-", "").isalnum() for i in ids)
    assert custom_id_of(rows[0][2]) == custom_id_of(rows[25][2])  # stable: same prompt, same id
    line = json.loads(Path(chunks[0]["path"]).read_text().splitlines()[0])
    assert line["body"] == {"model": "mock-model", "messages": [{"role": "user", "content": "prompt 0"}]}
    assert "stream" not in line["body"] and line["url"] == "/v1/chat/completions"
    small = BatchState(tmp_path / "s2.db")
    small.create_job("k")
    write_chunks(small, "k", tmp_path / "f2", rows, ChunkLimits(lines=1000, bytes=2_000))
    assert all(c["bytes"] <= 2_000 for c in small.chunks("k")) and len(small.chunks("k")) > 1
    assert chunk_ids == [c["chunk_id"] for c in chunks]


# -- jobs end to end ---------------------------------------------------------------------------


def test_a_job_fills_the_cache_and_generate_then_sends_nothing(tmp_path: Path) -> None:
    prompts = [f"q{i}" for i in range(30)] + ["q1", "q2"]

    async def main() -> None:
        async with MockServer(**FAST) as server:
            backend = make_backend(server, tmp_path)
            job = await BatchJob.asubmit(backend, requests(prompts), prefix="e2e")
            await job.await_done(progress=False)
            results = job.result()
            assert [r.text for r in results] == [_answer(p) for p in prompts]
            assert all(isinstance(r, MinimaLlmResponse) and r.cache_source == "batch" for r in results)
            assert results[0].usage.input_tokens == 1 and results[0].usage.output_tokens
            assert server.batches.lines_for("q1") == 1 and server.batches.lines_total == 30
            key = list(keys_of(requests(["q0"]), "mock-model", None))[0][2]
            assert key in job.state.chunk_items(1)
            raw = backend.cache.get_raw(key)
            assert raw["minima_batch"] == {"batch_id": raw["minima_batch"]["batch_id"], "custom_id": custom_id_of(key)}
            assert raw["minima_batch"]["batch_id"].startswith("batch_") and raw["choices"][0]["message"]["content"]
            server.reset_counts()
            again = await backend.run_batched(requests(prompts), progress=False)
            assert [r.text for r in again] == [_answer(p) for p in prompts] and server.requests_total == 0
            info = job.info()
            assert info["state"] == "completed" and info["done"] == 30 and info["failed"] == 0
            assert not job.workdir.exists()  # the job is final: its files are gone, its rows stay
            await backend.aclose()
            backend.close()

    asyncio.run(main())


def test_batch_mode_flow_of_minima_llm(tmp_path: Path) -> None:
    async def main() -> None:
        async with MockServer(**FAST) as server:
            backend = make_backend(server, tmp_path)
            reqs = requests(["a", "b", "a"])
            async with backend.batch_mode("run-7"):
                pending = await backend.generate(reqs[0])
                collected = await backend.run_batched(reqs, progress=False)
            assert isinstance(pending, BatchPendingResponse) and not hasattr(pending, "text")
            assert all(isinstance(r, BatchPendingResponse) for r in collected)
            assert server.requests_total == 0 and server.batches.created == 1
            answers = await backend.run_batched(reqs, progress=False)
            assert [r.text for r in answers] == [_answer("a"), _answer("b"), _answer("a")]
            assert server.requests_total == 0 and all(r.cached for r in answers)
            async with backend.batch_mode("run-7"):  # everything cached: nothing submitted
                assert (await backend.generate(reqs[1])).text == _answer("b")
            assert server.batches.created == 1
            backend.close()

    asyncio.run(main())


def test_partial_failures_are_row_outcomes_and_retryable_rows_go_again(tmp_path: Path) -> None:
    prompts = [f"row {i}" for i in range(28)]

    async def main() -> None:
        async with MockServer(**FAST) as server:
            server.batches.script_batches(["partial"])
            backend = make_backend(server, tmp_path)
            job = await BatchJob.asubmit(backend, requests(prompts), prefix="partial")
            await job.await_done(progress=False)
            results = job.result()
            failures = [r for r in results if isinstance(r, MinimaLlmFailure)]
            # the 400 lines fail for good with the provider's message; the 500 lines went again
            assert failures and all(f.status == 400 and f.error_type == "ClientError" for f in failures)
            assert all("Invalid request" in f.message for f in failures)
            assert server.batches.created == 2
            assert sum(isinstance(r, MinimaLlmResponse) for r in results) == len(prompts) - len(failures)
            backend.close()

    asyncio.run(main())


@pytest.mark.parametrize("fault", ["expire", "lost", "lag-output", "redirect"])
def test_expiry_loss_lagging_output_and_redirects_still_answer_every_row(tmp_path: Path, fault: str) -> None:
    prompts = [f"{fault} {i}" for i in range(12)]

    async def main() -> None:
        async with MockServer(require_api_key=KEY, **FAST) as server:
            server.batches.script_batches([fault])
            backend = make_backend(server, tmp_path)
            job = await BatchJob.asubmit(backend, requests(prompts), prefix=fault)
            await job.await_done(progress=False)
            assert [getattr(r, "text", None) for r in job.result()] == [_answer(p) for p in prompts]
            expected_batches = 2 if fault in ("expire", "lost") else 1
            assert server.batches.created == expected_batches
            if fault == "expire":  # only the expired half went again
                assert server.batches.lines_total == 12
            if fault == "redirect":
                assert server.files.downloads >= 1
            backend.close()

    asyncio.run(main())


def test_an_ambiguous_create_is_adopted_not_repeated(tmp_path: Path) -> None:
    async def main() -> None:
        async with MockServer(timeout_delay_s=3.0, **FAST) as server:
            server.batches.script_batches(["create-timeout"])
            config = make_config(server, tmp_path)
            from dataclasses import replace

            from minima_nb.engine.backend import OpenAIMinimaLlm

            backend = OpenAIMinimaLlm(replace(config, timeout_s=0.3))
            job = await BatchJob.asubmit(backend, requests(["x", "y"]), prefix="ambiguous")
            await job.await_done(progress=False)
            assert server.batches.created == 1
            assert [r.text for r in job.result()] == [_answer("x"), _answer("y")]
            backend.close()

    asyncio.run(main())


def test_cancel_is_recorded_sent_followed_and_final(tmp_path: Path) -> None:
    async def main() -> None:
        async with MockServer(batch_time_scale=600.0) as server:  # a batch runs ~1 s, a cancel 0.1 s
            backend = make_backend(server, tmp_path)
            job = await BatchJob.asubmit(backend, requests([f"c{i}" for i in range(10)]), prefix="cancel")
            await job.acancel()
            assert job.info()["state"] == "cancelled" and server.batches.cancels == 1
            assert job.info()["batches"][0]["remote_status"] == "cancelled"
            results = job.result()
            assert all(isinstance(r, MinimaLlmFailure) and r.error_type == "BatchCancelled" for r in results)
            backend.close()

    asyncio.run(main())


def test_a_cancel_racing_completion_keeps_the_answers(tmp_path: Path) -> None:
    async def main() -> None:
        async with MockServer(batch_time_scale=600.0) as server:
            server.batches.script_batches(["cancel-race"])
            backend = make_backend(server, tmp_path)
            job = await BatchJob.asubmit(backend, requests(["r1", "r2"]), prefix="race")
            await job.acancel()
            assert [r.text for r in job.result()] == [_answer("r1"), _answer("r2")]
            backend.close()

    asyncio.run(main())


def test_the_same_prompts_reattach_and_the_key_is_never_written(tmp_path: Path) -> None:
    async def main() -> None:
        async with MockServer(batch_time_scale=2000.0) as server:
            backend = make_backend(server, tmp_path)
            first = await BatchJob.asubmit(backend, requests(["k1", "k2"]), prefix="same")
            second = await BatchJob.asubmit(backend, requests(["k1", "k2"]), prefix="same")
            assert second.job_id == first.job_id and server.batches.created == 1
            running = [p for p in tmp_path.rglob("*.jsonl")] + [state_path(backend.config)]
            assert running and all(KEY.encode() not in p.read_bytes() for p in running)
            await second.await_done(progress=False)
            other = await BatchJob.asubmit(backend, requests(["k1", "k2"]), prefix="same")
            assert other.job_id != first.job_id and other.final  # all cached: nothing to send
            assert server.batches.created == 1
            backend.close()

    asyncio.run(main())
    scanned = 0
    for path in tmp_path.rglob("*"):
        if path.is_file():
            scanned += 1
            assert KEY.encode() not in path.read_bytes(), path
    assert scanned >= 2 and state_path(make_config(type("S", (), {"base_url": "http://x/v1"})(), tmp_path)).exists()


def test_sigkill_while_waiting_then_a_rerun_resumes_without_duplicates(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    count = 20
    with MockServer(batch_time_scale=400.0) as server:  # a batch takes ~1.8 s
        worker = subprocess.Popen([sys.executable, str(Path(__file__).parent / "_batch_resume_worker.py"),
                                   server.base_url, str(tmp_path), str(count)], stdout=subprocess.PIPE, text=True)
        try:
            for _ in range(600):
                if server.batches.created:
                    break
                time.sleep(0.02)
            assert server.batches.created == 1
            time.sleep(0.2)  # waiting (polling) now
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            if worker.stdout is not None:
                worker.stdout.close()
        backend = make_backend(server, tmp_path)
        prompts = [f"kill {i}" for i in range(count)]
        job = BatchJob.submit(backend, requests(prompts), prefix="kill")  # the same cell, run again
        job.wait(progress=False)
        assert [r.text for r in job.result()] == [_answer(p) for p in prompts]
        assert server.batches.created == 1  # reattached: zero duplicate batches
        assert all(server.batches.lines_for(p) == 1 for p in prompts)  # zero prompts asked twice
        assert server.requests_total == 0
        backend.close()
