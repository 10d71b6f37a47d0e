"""The batch API's faces: df.minima.generate(via="batch"), df.minima.submit, batch_jobs(), the CLI,
and minima-llm's four functions, against the mock over a real socket."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from _batchapi import FAST, make_backend, make_config, requests

import minima_nb
from minima_nb.batch import (
    BatchJob,
    batch_jobs,
    batch_status_overview,
    cancel_all_batches,
    cancel_all_local_batches,
    cancel_batch,
)
from minima_nb.cli import main
from minima_nb.testing import MockServer, mock_answer


def _answer(prompt: str) -> str:
    return mock_answer([{"role": "user", "content": prompt}], "mock-model")


def test_generate_via_batch_equals_generate_and_submit_returns_a_job(tmp_path: Path) -> None:
    df = pd.DataFrame({"prompt": ["a", "b", None, "a", "c"]}, index=[10, 11, 12, 13, 14])
    with MockServer(**FAST) as server:
        backend = make_backend(server, tmp_path)
        out = df.minima.generate("prompt", backend=backend, via="batch", prefix="nb", progress=False)
        assert server.requests_total == 0 and server.batches.created == 1
        live = df.minima.generate("prompt", backend=backend, progress=False)
        assert server.requests_total == 0  # every answer came from the batch, through the cache
        pd.testing.assert_series_equal(out, live)
        assert out.tolist()[:2] == [_answer("a"), _answer("b")] and pd.isna(out.iloc[2])
        details = df.minima.generate("prompt", backend=backend, via="batch", details=True, progress=False)
        pd.testing.assert_frame_equal(details, df.minima.generate("prompt", backend=backend, details=True,
                                                                  progress=False))
        frame = pd.DataFrame({"prompt": ["d", "e"]})
        job = frame.minima.submit("prompt", backend=backend, prefix="nb2")
        assert isinstance(job, BatchJob)
        assert job.wait(progress=False).result().tolist() == [_answer("d"), _answer("e")]
        jobs = batch_jobs(backend.config)
        assert list(jobs.columns[:3]) == ["job_id", "prefix", "state"] and set(jobs["state"]) == {"completed"}
        assert minima_nb.batch_jobs is batch_jobs and minima_nb.BatchJob is BatchJob
        with pytest.raises(ValueError, match="via="):
            df.minima.generate("prompt", backend=backend, via="carrier-pigeon")
        backend.close()


def test_the_cli_lists_waits_and_cancels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with MockServer(batch_time_scale=600.0) as server:
        backend = make_backend(server, tmp_path)
        for name, value in (("OPENAI_BASE_URL", server.base_url), ("OPENAI_MODEL", "mock-model"),
                            ("OPENAI_API_KEY", "sk-cli-test"), ("PARASAIL_POLL_INTERVAL_S", "0.04")):
            monkeypatch.setenv(name, value)
        job = BatchJob.submit(backend, requests(["x", "y"]), prefix="cli-a")
        other = BatchJob.submit(backend, requests(["z"]), prefix="cli-b")
        cache_dir = backend.config.cache_dir
        assert main(["batch", "--cache-dir", cache_dir, "list"]) == 0
        listed = capsys.readouterr().out
        assert job.job_id in listed and other.job_id in listed
        assert main(["batch", "--cache-dir", cache_dir, "status", job.job_id]) == 0
        assert main(["batch", "--cache-dir", cache_dir, "wait", job.job_id]) == 0
        assert "completed" in capsys.readouterr().out
        assert main(["batch", "--cache-dir", cache_dir, "cancel-all", "--prefix", "cli-b"]) == 0
        assert BatchJob.open(other.job_id, backend).info()["state"] == "cancelled"
        assert main(["batch", "--cache-dir", cache_dir, "cancel", "no-such-job"]) == 1
        assert "no batch job" in capsys.readouterr().err
        assert "sk-cli-test" not in capsys.readouterr().out
        backend.close()


def test_minima_llm_overview_and_cancel_functions_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with MockServer(batch_time_scale=600.0) as server:
        backend = make_backend(server, tmp_path)
        config = make_config(server, tmp_path)
        first = BatchJob.submit(backend, requests(["p1"]), prefix="exp-1")
        second = BatchJob.submit(backend, requests(["p2"]), prefix="exp-2")
        third = BatchJob.submit(backend, requests(["p3"]), prefix="other")
        rows = batch_status_overview(config)
        assert {r["job_id"] for r in rows} == {first.job_id, second.job_id, third.job_id}
        assert "exp-1" in capsys.readouterr().out
        cancel_batch(first.info()["batches"][0]["batch_id"], config)
        assert "cancelled" in capsys.readouterr().out
        assert BatchJob.open(first.job_id, backend).final
        assert cancel_all_batches(config, "exp") == [second.job_id]
        assert cancel_all_local_batches(config) == [third.job_id]
        assert server.batches.cancels == 3
        assert all(BatchJob.open(j.job_id, backend).final for j in (first, second, third))
        backend.close()
