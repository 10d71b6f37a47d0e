"""A process that submits a batch job on the mock and waits for it (killed by test_batchapi)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _batchapi import make_backend, requests  # noqa: E402

from minima_nb.batch import BatchJob  # noqa: E402


class _Server:
    def __init__(self, url: str) -> None:
        self.base_url = url


if __name__ == "__main__":
    url, root, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    backend = make_backend(_Server(url), root)
    job = BatchJob.submit(backend, requests([f"kill {i}" for i in range(count)]), prefix="kill")
    print(job.job_id, flush=True)
    job.wait(progress=False)
