"""Helper process of the reliability suite: runs one batch, as a user's script would.

Usage: python _batch_worker.py SPEC.json, where the spec (written by _support.write_spec) gives
base_url, cache_dir, out_file, prompts, workers, and bridge: "asyncio" (``asyncio.run``) or
"run_sync" (``minima_nb.run_sync``, the sync bridge). Request ids are "row-<index>". On success
it writes a JSON list of {"request_id", "text", "cached"} (one per prompt, in order) to out_file.
On KeyboardInterrupt it prints "interrupted" and exits with 130, like a shell does on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import sys

import minima_nb
from minima_nb import MinimaLlmConfig, MinimaLlmRequest, OpenAIMinimaLlm


def build(spec: dict) -> tuple[OpenAIMinimaLlm, list[MinimaLlmRequest]]:
    workers = spec["workers"]
    config = MinimaLlmConfig(
        base_url=spec["base_url"], model="mock-model", api_key="sk-test-worker", rpm=0,
        timeout_s=10.0, base_backoff_s=0.01, max_backoff_s=0.05, cache_dir=spec["cache_dir"],
        max_outstanding=workers, batch={"num_workers": workers},
    )
    requests = [MinimaLlmRequest(f"row-{i}", [{"role": "user", "content": p}])
                for i, p in enumerate(spec["prompts"])]
    return OpenAIMinimaLlm(config), requests


async def run(backend: OpenAIMinimaLlm, requests: list[MinimaLlmRequest]) -> list:
    try:
        return await backend.run_batched(requests, progress=False)
    finally:
        await backend.aclose()


def main(spec_file: str) -> int:
    with open(spec_file, encoding="utf-8") as f:
        spec = json.load(f)
    backend, requests = build(spec)
    try:
        if spec["bridge"] == "run_sync":
            results = minima_nb.run_sync(run(backend, requests))
        else:
            results = asyncio.run(run(backend, requests))
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        return 130
    finally:
        backend.close()
    rows = [{"request_id": r.request_id, "text": getattr(r, "text", None), "cached": r.cached}
            for r in results]
    with open(spec["out_file"], "w", encoding="utf-8") as out:
        json.dump(rows, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
