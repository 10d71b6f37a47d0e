"""A cache directory written by minima-llm 0.2.x serves minima_nb, and stays minima-llm's.

The real minima-llm 0.2.8 (dev extra) answers batches in a subprocess against the embedded mock
server, writing its ``minima_llm.db``; minima_nb then reads the same directory (run_batched and
``df.minima.generate``) without sending a request, and minima-llm reads it again afterwards.
A 0.2.6 file (table ``cache`` without the ``model``/``canonical`` columns) is made with plain
sqlite3 following minima-llm 0.2.6's schema.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _mock_backend import close_backend, make_backend

import minima_nb  # noqa: F401  (registers df.minima)
from minima_nb.cache import CACHE_FILENAME
from minima_nb.engine.sync import run_sync
from minima_nb.testing import MockServer, mock_answer
from minima_nb.types import MinimaLlmRequest

HELPER = Path(__file__).with_name("_minima_llm_proc.py")
# Non-ASCII on purpose: minima-llm spells its key with ensure_ascii=True, minima_nb does not.
PROMPTS = [f"Question {i}" for i in range(5)] + ["Café ☕ combien?", 'quote " and \\ backslash']
TEMPERATURE = 0.0  # a float, as a minima-llm user wrote it: 0.0 and 0 are different keys there


@pytest.fixture(scope="module")
def server():
    with MockServer() as srv:
        yield srv


def minima_llm(server: MockServer, cache_dir: Path, prompts: list[str], **spec: Any) -> list[dict]:
    """Run the real minima-llm 0.2.8 on ``prompts`` in a subprocess; its results as dicts."""
    temperature = spec.pop("temperature", TEMPERATURE)
    requests = [{"id": f"q{i}", "prompt": p, "temperature": temperature} for i, p in enumerate(prompts)]
    body = {"base_url": server.base_url, "model": "mock-model", "cache_dir": str(cache_dir),
            "requests": requests, **spec}
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    done = subprocess.run([sys.executable, str(HELPER), json.dumps(body)], capture_output=True,
                          text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def msgs(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


@pytest.fixture(scope="module")
def written(server, tmp_path_factory) -> Path:
    """A cache directory minima-llm 0.2.8 filled with PROMPTS (its own run, real HTTP)."""
    directory = tmp_path_factory.mktemp("minima-llm") / "cache"
    server.reset_counts()
    results = minima_llm(server, directory, PROMPTS)
    assert [r["text"] for r in results] == [mock_answer(msgs(p), "mock-model") for p in PROMPTS]
    assert not any(r["cached"] for r in results)
    assert server.requests_total == len(PROMPTS)
    return directory


@pytest.fixture
def llm_dir(written, tmp_path) -> Path:
    """A private copy of the minima-llm directory (tests change it)."""
    copy = tmp_path / "cache"
    shutil.copytree(written, copy)
    return copy


def tables(directory: Path) -> set[str]:
    with sqlite3.connect(directory / CACHE_FILENAME) as conn:
        return {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def legacy_rows(directory: Path) -> list[tuple]:
    with sqlite3.connect(directory / CACHE_FILENAME) as conn:
        return conn.execute("SELECT key, response_text, response_raw, created_at FROM cache ORDER BY key").fetchall()


def batch(llm, prompts: list[str], temperature: Any = TEMPERATURE, **fields: Any) -> list[Any]:
    requests = [MinimaLlmRequest(request_id=f"r{i}", messages=msgs(p), temperature=temperature, **fields)
                for i, p in enumerate(prompts)]
    return run_sync(llm.run_batched(requests, progress=False))


# -- minima-llm wrote first ------------------------------------------------------------------------


def test_run_batched_answers_from_minima_llms_cache_without_a_request(server, llm_dir):
    """run_batched on a minima-llm directory: every answer is a hit, zero upstream requests."""
    before = legacy_rows(llm_dir)
    server.reset_counts()
    llm = make_backend(server, llm_dir)
    try:
        results = batch(llm, PROMPTS)
        again = batch(llm, PROMPTS)
    finally:
        close_backend(llm)
    assert server.requests_total == 0
    assert [r.text for r in results] == [mock_answer(msgs(p), "mock-model") for p in PROMPTS]
    assert all(r.cached for r in results)
    assert {r.cache_source for r in results} == {"legacy"}
    # Carried forward into minima_nb's own table: the next run is an ordinary hit.
    assert {r.cache_source for r in again} == {"primary"}
    assert [r.text for r in again] == [r.text for r in results]
    assert {"cache", "responses", "schema_version"} <= tables(llm_dir)
    assert legacy_rows(llm_dir) == before  # minima-llm's rows untouched
