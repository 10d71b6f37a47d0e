"""What a waiting job shows: the text heartbeat's lines, and where the views are drawn.

Against the mock over a real socket, its batch clock slowed enough (a 12-minute batch in about
1.8 s) that polls every 10 ms see each state: validating, in progress, finalizing.
"""

from __future__ import annotations

import io
import re
import threading
from pathlib import Path

from _batchapi import KEY, make_backend, requests

from minima_nb.batch import BatchJob
from minima_nb.integrations.batchapi.view import JobStatus, JobView, TextView
from minima_nb.testing import MockServer

SLOW = {"batch_time_scale": 400.0}  # validating 60 s = 150 ms, in progress 600 s = 1.5 s, finalizing 150 ms


def test_the_heartbeat_says_each_batch_state_the_counts_and_the_time_waited(tmp_path: Path) -> None:
    stream = io.StringIO()
    with MockServer(require_api_key=KEY, **SLOW) as server:
        server.batches.script_batches(["expire"])
        backend = make_backend(server, tmp_path, poll_interval_s=0.01)
        prompts = [f"row {i % 12}" for i in range(24)]
        job = BatchJob.submit(backend, requests(prompts), prefix="beat")
        job.wait(progress=TextView(heartbeat_s=3600, stream=stream))  # a line per change of state
        backend.close()
    lines = stream.getvalue().splitlines()
    assert all(line.startswith(f"batch job {job.job_id}: ") for line in lines)
    text = "\n".join(lines)
    assert "1 batch (1 in progress) | prompts " in text  # the first batch, then the expired half again:
    for state in ("validating", "in progress", "finalizing"):
        assert f"2 batches (1 {state})" in text, (state, text)
    assert re.search(r"prompts [1-9]\d*/12 done, 0 failed, 0 expired", text)  # the provider's running count
    assert re.search(r"prompts \d+/12 done, 0 failed, 6 expired \(24 rows\)", text)
    assert re.fullmatch(r".*\| prompts 12/12 done, 0 failed, 6 expired \(24 rows\) \| waited \d+:\d\d:\d\d \| completed",
                        lines[-1])


class _Recorder(JobView):
    def __init__(self) -> None:
        super().__init__()
        self.updated: list[JobStatus] = []
        self.drawn_on: set[int] = set()
        self.closed: list[tuple[int, str]] = []

    def update(self, status: JobStatus) -> None:
        super().update(status)
        self.updated.append(status)

    def draw(self) -> None:
        self.drawn_on.add(threading.get_ident())

    def close(self, status: str = "done") -> None:
        self.closed.append((threading.get_ident(), status))


def test_wait_draws_and_closes_its_view_on_the_calling_thread(tmp_path: Path) -> None:
    view = _Recorder()
    with MockServer(require_api_key=KEY, **SLOW) as server:
        backend = make_backend(server, tmp_path, poll_interval_s=0.01)
        job = BatchJob.submit(backend, requests([f"q{i}" for i in range(5)]), prefix="thread")
        job.wait(progress=view)
        backend.close()
    me = threading.get_ident()
    assert view.drawn_on == {me} and view.closed == [(me, "done")]
    assert view.updated[-1].state == "completed" and view.updated[-1].finished == 5
