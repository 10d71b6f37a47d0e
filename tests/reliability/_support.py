"""Shared helpers of the reliability suite: fast configs, batch runners, plain-sqlite3 cache probes.

The probes read the cache file with the standard library only, so a test never trusts
minima_nb's own code to tell it what minima_nb wrote.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from minima_nb import MinimaLlmConfig, MinimaLlmRequest, OpenAIMinimaLlm
from minima_nb.cache import CACHE_FILENAME
from minima_nb.testing import mock_answer

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
WORKER = HERE / "_batch_worker.py"
MODEL = "mock-model"


def fast_config(base_url: str, **overrides: Any) -> MinimaLlmConfig:
    """A config for the mock server: no pacing, tiny backoff, no batch abort unless asked."""
    settings: dict[str, Any] = dict(
        base_url=base_url, model=MODEL, api_key="sk-test-reliability", rpm=0, timeout_s=10.0,
        base_backoff_s=0.001, max_backoff_s=0.01, max_retry_after_s=0.01, cooldown_cap_s=0.01,
        batch={"max_failures": None},
    )
    settings.update(overrides)
    return MinimaLlmConfig(**settings)


def ask(prompt: str, request_id: str | None = None) -> MinimaLlmRequest:
    """A one-message request whose id defaults to the prompt."""
    return MinimaLlmRequest(request_id or prompt, [{"role": "user", "content": prompt}])


def expected(prompt: str) -> str:
    """The mock server's answer to ``prompt``."""
    return mock_answer([{"role": "user", "content": prompt}], MODEL)


def run_batch(backend: OpenAIMinimaLlm, requests: Sequence[MinimaLlmRequest], **options: Any) -> list:
    """``backend.run_batched`` on a fresh event loop, closing the HTTP pool afterwards."""

    async def go() -> list:
        try:
            return await backend.run_batched(requests, progress=False, **options)
        finally:
            await backend.aclose()

    return asyncio.run(go())


def generate(backend: OpenAIMinimaLlm, request: MinimaLlmRequest) -> Any:
    """``backend.generate`` on a fresh event loop, closing the HTTP pool afterwards."""

    async def go() -> Any:
        try:
            return await backend.generate(request)
        finally:
            await backend.aclose()

    return asyncio.run(go())


# -- the cache file, read with plain sqlite3 ----------------------------------------------------


def db_path(cache_dir: Path) -> Path:
    return Path(cache_dir) / CACHE_FILENAME


def stored_rows(cache_dir: Path) -> list[tuple[str, str, str]]:
    """(key, last user prompt, text) of every committed row, sorted by key."""
    with sqlite3.connect(db_path(cache_dir)) as conn:
        rows = conn.execute("SELECT key, messages, text FROM responses ORDER BY key").fetchall()
    return [(key, json.loads(messages)[-1]["content"], text) for key, messages, text in rows]


def stored_prompts(cache_dir: Path) -> set[str]:
    """The prompts that have a committed row."""
    return {prompt for _, prompt, _ in stored_rows(cache_dir)}


def integrity(cache_dir: Path) -> str:
    """SQLite's own verdict on the file: "ok" when sound, else what is wrong."""
    try:
        with sqlite3.connect(db_path(cache_dir)) as conn:
            return conn.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        return str(exc)


# -- subprocesses -------------------------------------------------------------------------------


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment with the repository importable, plus ``extra``."""
    paths = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}


def worker_command(spec_file: Path) -> list[str]:
    """The command that runs one batch described by ``spec_file`` (see _batch_worker.py)."""
    return [sys.executable, str(WORKER), str(spec_file)]


def write_spec(path: Path, *, base_url: str, cache_dir: Path, out_file: Path, prompts: list[str],
               workers: int = 16, bridge: str = "asyncio") -> Path:
    """Write a worker's job description; returns ``path``."""
    spec = {"base_url": base_url, "cache_dir": str(cache_dir), "out_file": str(out_file),
            "prompts": prompts, "workers": workers, "bridge": bridge}
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path
