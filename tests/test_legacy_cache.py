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

import pandas as pd
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


def test_dataframe_generate_answers_from_minima_llms_cache_without_a_request(server, llm_dir):
    """df.minima.generate (the bulk lookup() path) on a minima-llm directory: zero requests."""
    server.reset_counts()
    llm = make_backend(server, llm_dir)
    try:
        df = pd.DataFrame({"prompt": PROMPTS})
        answers = df.minima.generate("prompt", backend=llm, temperature=TEMPERATURE, progress=False)
        details = df.minima.generate("prompt", backend=llm, temperature=TEMPERATURE, progress=False,
                                     details=True)
    finally:
        close_backend(llm)
    assert server.requests_total == 0
    assert list(answers) == [mock_answer(msgs(p), "mock-model") for p in PROMPTS]
    assert details["cached"].all()
    assert list(details["text"]) == list(answers)


def test_generate_one_request_answers_from_minima_llms_cache(server, llm_dir):
    """backend.generate() on a minima-llm directory: a hit with cache_source "legacy", raw kept."""
    server.reset_counts()
    llm = make_backend(server, llm_dir)
    try:
        request = MinimaLlmRequest("one", msgs(PROMPTS[5]), temperature=TEMPERATURE)
        first = run_sync(llm.generate(request, include_raw=True))
        second = run_sync(llm.generate(request, include_raw=True))
    finally:
        close_backend(llm)
    assert server.requests_total == 0
    assert first.text == mock_answer(msgs(PROMPTS[5]), "mock-model") and first.cached
    assert (first.cache_source, second.cache_source) == ("legacy", "primary")
    # The server's body and its usage came across from minima-llm's row.
    assert second.raw is not None and second.raw["choices"][0]["message"]["content"] == first.text
    assert first.input_tokens == second.raw["usage"]["prompt_tokens"]
    assert first.finish_reason == second.raw["choices"][0]["finish_reason"]


def test_minima_llm_still_reads_its_cache_after_minima_nb(server, llm_dir):
    """After minima_nb used (and added its table to) the file, minima-llm 0.2.8 still hits it all."""
    llm = make_backend(server, llm_dir)
    try:
        batch(llm, PROMPTS)
        batch(llm, ["Only minima_nb asked this"])
    finally:
        close_backend(llm)
    server.reset_counts()
    again = minima_llm(server, llm_dir, PROMPTS)
    assert server.requests_total == 0
    assert all(r["cached"] and r["cache_source"] == "primary" for r in again)
    assert [r["text"] for r in again] == [mock_answer(msgs(p), "mock-model") for p in PROMPTS]


def test_fresh_answers_have_no_cache_source(server, tmp_path):
    """A fresh answer's cache_source is None; the same request again is a "primary" hit."""
    llm = make_backend(server, tmp_path / "cache")
    try:
        fresh = batch(llm, ["brand new"])[0]
        hit = batch(llm, ["brand new"])[0]
    finally:
        close_backend(llm)
    assert (fresh.cached, fresh.cache_source) == (False, None)
    assert (hit.cached, hit.cache_source) == (True, "primary")


# -- minima_nb wrote first ------------------------------------------------------------------------


def test_minima_llm_opens_a_directory_minima_nb_wrote(server, tmp_path):
    """minima-llm creates its own table in minima_nb's file, answers, and hits it the next time;
    minima_nb's rows and minima-llm's then both serve minima_nb."""
    directory = tmp_path / "cache"
    llm = make_backend(server, directory)
    try:
        batch(llm, PROMPTS[:3])
    finally:
        close_backend(llm)
    assert "cache" not in tables(directory)

    server.reset_counts()
    first = minima_llm(server, directory, PROMPTS)  # minima-llm cannot read minima_nb's rows
    assert server.requests_total == len(PROMPTS) and not any(r["cached"] for r in first)
    server.reset_counts()
    second = minima_llm(server, directory, PROMPTS)
    assert server.requests_total == 0 and all(r["cached"] for r in second)
    assert {"cache", "responses"} <= tables(directory)

    llm = make_backend(server, directory)
    try:
        results = batch(llm, PROMPTS)
    finally:
        close_backend(llm)
    assert server.requests_total == 0
    assert [r.cache_source for r in results] == ["primary"] * 3 + ["legacy"] * (len(PROMPTS) - 3)


# -- a minima-llm 0.2.6 file (no model/canonical columns) ------------------------------------------

V026_SCHEMA = ("CREATE TABLE cache (key TEXT PRIMARY KEY, response_text TEXT NOT NULL, "
               "response_raw TEXT, created_at REAL NOT NULL)")


def make_v026(source: Path, target: Path) -> None:
    """A 0.2.6 file holding ``source``'s minima-llm rows (0.2.6 wrote the same keys and columns)."""
    target.mkdir(parents=True)
    with sqlite3.connect(target / CACHE_FILENAME) as conn:
        conn.execute("PRAGMA journal_mode=WAL")  # 0.2.6 also opened its file in WAL mode
        conn.execute(V026_SCHEMA)
        conn.executemany("INSERT INTO cache VALUES (?, ?, ?, ?)", legacy_rows(source))
    conn.close()


def columns(directory: Path) -> list[str]:
    with sqlite3.connect(directory / CACHE_FILENAME) as conn:
        return [row[1] for row in conn.execute("PRAGMA table_info(cache)")]


def test_a_026_file_serves_minima_nb_and_then_minima_llm_028(server, written, tmp_path):
    """A table without 0.2.7's columns: minima_nb hits it (and adds no column to it); minima-llm
    0.2.8 then migrates it its own way and still hits every row."""
    old = tmp_path / "v026"
    make_v026(written, old)
    server.reset_counts()
    llm = make_backend(server, old)
    try:
        results = batch(llm, PROMPTS)
        df = pd.DataFrame({"prompt": PROMPTS})
        answers = df.minima.generate("prompt", backend=llm, temperature=TEMPERATURE, progress=False)
    finally:
        close_backend(llm)
    assert server.requests_total == 0
    assert [r.cache_source for r in results] == ["legacy"] * len(PROMPTS)
    assert list(answers) == [r.text for r in results]
    assert columns(old) == ["key", "response_text", "response_raw", "created_at"]

    again = minima_llm(server, old, PROMPTS)
    assert server.requests_total == 0 and all(r["cached"] for r in again)
    assert columns(old) == ["key", "response_text", "response_raw", "created_at", "model", "canonical"]


def test_a_026_file_read_by_dataframe_generate_first(server, written, tmp_path):
    """The accessor alone (no run_batched before it) finds 0.2.6 rows: the bulk path consults them."""
    old = tmp_path / "v026"
    make_v026(written, old)
    server.reset_counts()
    llm = make_backend(server, old)
    try:
        df = pd.DataFrame({"prompt": PROMPTS})
        answers = df.minima.generate("prompt", backend=llm, temperature=TEMPERATURE, progress=False)
    finally:
        close_backend(llm)
    assert server.requests_total == 0
    assert list(answers) == [mock_answer(msgs(p), "mock-model") for p in PROMPTS]


# -- the key, as minima-llm spells it ------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    {},
    {"temperature": 0.0},
    {"temperature": 0},
    {"temperature": 0.7, "max_tokens": 64},
    {"extra": {"top_p": 0.9, "seed": 3}},
    {"extra": {}},
    {"model": "other-model", "temperature": 1.5},
])
@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "plain"}],
    [{"role": "system", "content": "Sois bref."}, {"role": "user", "content": "Café ☕ — “quotes”"}],
    [{"role": "user", "content": [{"type": "text", "text": "parts"}]}],
])
def test_legacy_key_is_minima_llms_own_key(fields, messages):
    """legacy_key() gives exactly the key minima-llm 0.2.8 computes for the same request."""
    from minima_llm import MinimaLlmRequest as OldRequest
    from minima_llm import OpenAIMinimaLlm as OldBackend

    from minima_nb.cache.legacy import legacy_key

    fields = dict(fields)
    model = fields.pop("model", "mock-model")
    old = OldRequest(request_id="x", messages=messages, model=model, **fields)
    canonical = OldBackend._canonical_request(old, model)
    expected = OldBackend._hash_key(canonical)
    assert legacy_key(model, messages, fields.get("temperature"), fields.get("max_tokens"),
                      fields.get("extra")) == (expected, canonical)
