"""Helper process for tests/test_resume.py: runs one batch of COUNT prompts through run_batched.

Usage: python _resume_worker.py BASE_URL CACHE_DIR OUT_FILE COUNT
Prompts are "resume-0" .. "resume-{COUNT-1}". When the batch finishes, writes a JSON list of
{"request_id", "text", "cached"} (one per request, in order) to OUT_FILE. The test kills the
first run with SIGKILL mid-way, then runs it again against the same cache.
"""

from __future__ import annotations

import asyncio
import json
import sys

from minima_nb.config import MinimaLlmConfig
from minima_nb.engine.backend import OpenAIMinimaLlm
from minima_nb.types import MinimaLlmRequest

WORKERS = 16


def prompt(index: int) -> str:
    """The prompt of row ``index`` (the test builds the same names)."""
    return f"resume-{index}"


async def run(base_url: str, cache_dir: str, count: int) -> list[dict]:
    config = MinimaLlmConfig(
        base_url=base_url, model="mock-model", api_key="sk-test", rpm=0, timeout_s=10.0,
        base_backoff_s=0.01, max_backoff_s=0.05, cache_dir=cache_dir,
        max_outstanding=WORKERS, batch={"num_workers": WORKERS},
    )
    backend = OpenAIMinimaLlm(config)
    requests = [MinimaLlmRequest(f"row-{i}", [{"role": "user", "content": prompt(i)}]) for i in range(count)]
    try:
        results = await backend.run_batched(requests, progress=False)
    finally:
        await backend.aclose()
        backend.close()
    return [{"request_id": r.request_id, "text": r.text, "cached": r.cached} for r in results]


def main(base_url: str, cache_dir: str, out_file: str, count: int) -> None:
    rows = asyncio.run(run(base_url, cache_dir, count))
    with open(out_file, "w", encoding="utf-8") as out:
        json.dump(rows, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
