"""Shared helpers of the batch-API tests: a backend on the mock with a fast batch clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minima_nb.config import MinimaLlmConfig
from minima_nb.engine.backend import OpenAIMinimaLlm
from minima_nb.types import MinimaLlmRequest

KEY = "sk-batch-test-SECRET-0123456789"
FAST = {"batch_time_scale": 72_000.0}  # a 12-minute mock batch takes 10 ms


def make_config(server: Any, tmp_path: Path, **parasail: Any) -> MinimaLlmConfig:
    settings = {"poll_interval_s": 0.04, **parasail}
    return MinimaLlmConfig(base_url=server.base_url, model="mock-model", api_key=KEY,
                           cache_dir=str(tmp_path / "cache"), timeout_s=5.0, parasail=settings)


def make_backend(server: Any, tmp_path: Path, **parasail: Any) -> OpenAIMinimaLlm:
    return OpenAIMinimaLlm(make_config(server, tmp_path, **parasail))


def requests(prompts: list[str], **fields: Any) -> list[MinimaLlmRequest]:
    return [MinimaLlmRequest(request_id=f"r{i}", messages=[{"role": "user", "content": p}], **fields)
            for i, p in enumerate(prompts)]
