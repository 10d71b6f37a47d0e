"""The batch jobs' bulk paths: input lines spelled from parts, duplicates across windows, the
state file's item layout (and the first layout's migration), output lines decoded once, and the
cache's one-transaction lots. Real SQLite files in tmp_path, real prompt caches."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from _batchapi import requests

from minima_nb.cache import PromptCache, cache_key
from minima_nb.engine.wire import build_payload
from minima_nb.integrations.batchapi import chunks as chunks_module
from minima_nb.integrations.batchapi.chunks import (
    ChunkLimits,
    custom_id_of,
    keyed,
    keys_of,
    write_chunks,
)
from minima_nb.integrations.batchapi.ingest import ingest_chunk, parse_output_line
from minima_nb.integrations.batchapi.state import BatchState
from minima_nb.types import MinimaLlmRequest

_VARIED = [
    MinimaLlmRequest("a", [{"role": "user", "content": 'quote " and \\ and é and \n'}]),
    MinimaLlmRequest("b", [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], temperature=0.0),
    MinimaLlmRequest("c", [{"role": "user", "content": "x"}], temperature=0.7, max_tokens=5,
                     extra={"top_p": 0.9, "stop": ["]}", "\n"]}),
    MinimaLlmRequest("d", [{"role": "user", "content": [{"type": "text", "text": "parts"}]}], max_tokens=3),
    MinimaLlmRequest("e", [{"role": "user", "content": "y", "name": "bob"}], model="mock-model-large"),
    MinimaLlmRequest("f", [{"role": "user", "content": "z"}], extra={"messages": [{"role": "user", "content": "w"}]}),
]


def test_each_input_line_is_the_live_body_and_its_key_is_the_cache_key(tmp_path: Path) -> None:
    rows = list(keyed(_VARIED, "mock-model", "ns"))
    for (request, model, key, line), (_, _, key_again) in zip(rows, keys_of(_VARIED, "mock-model", "ns"), strict=True):
        assert key == key_again == cache_key(model, request.messages, request.temperature, request.max_tokens,
                                             request.extra, "ns")[0]
        if line is not None:
            parsed = json.loads(line)
            assert parsed["body"] == build_payload(request, model) and parsed["custom_id"] == custom_id_of(key)
    assert rows[-1][3] is None  # extra sets "messages": the general encoder spells that body
    state = BatchState(tmp_path / "state.db")
    for job, source in (("j", rows), ("k", list(keys_of(_VARIED, "mock-model", "ns")))):  # either kind of row
        state.create_job(job)
        write_chunks(state, job, tmp_path / "files", source, ChunkLimits())
        bodies = sorted(json.dumps(json.loads(line)["body"], sort_keys=True) for c in state.chunks(job)
                        for line in Path(c["path"]).read_text().splitlines())
        assert bodies == sorted(json.dumps(build_payload(r, r.model or "mock-model"), sort_keys=True) for r in _VARIED)
    assert write_chunks(state, "j", tmp_path / "files", rows, ChunkLimits())[1:] == (6, 0)  # a job's own: none again


def test_duplicates_far_apart_are_written_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(chunks_module, "_WINDOW", 7)  # many windows: duplicates meet only across them
    monkeypatch.setattr(chunks_module, "_BLOOM_BITS", 64)  # a tiny filter: many false "maybe"s to settle
    state = BatchState(tmp_path / "state.db")
    state.create_job("j")
    prompts = [f"p{i % 40}" for i in range(200)] + [f"new {i}" for i in range(60)]
    _, seen, unique = write_chunks(state, "j", tmp_path / "files", keyed(requests(prompts), "mock-model", None),
                                   ChunkLimits(lines=25))
    lines = [line for c in state.chunks("j") for line in Path(c["path"]).read_text().splitlines()]
    assert (seen, unique, len(lines)) == (260, 100, 100)
    assert sorted(json.loads(line)["body"]["messages"][0]["content"] for line in lines) == sorted(
        {*(f"p{i}" for i in range(40)), *(f"new {i}" for i in range(60))})
    assert state.counts("j") == {"queued": 100}
    for chunk in state.chunks("j"):  # each file's lines are exactly its chunk's items
        ids = sorted(json.loads(line)["custom_id"] for line in Path(chunk["path"]).read_text().splitlines())
        assert ids == sorted(custom_id_of(k) for k in state.chunk_items(chunk["chunk_id"]))


def test_a_state_file_of_the_first_layout_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE items (job_id TEXT NOT NULL, custom_id TEXT NOT NULL, cache_key TEXT NOT NULL, chunk_id INTEGER,
            origin INTEGER, state TEXT NOT NULL, rounds INTEGER NOT NULL DEFAULT 1, status INTEGER, error_type TEXT,
            error TEXT, PRIMARY KEY (job_id, custom_id)) WITHOUT ROWID;
        CREATE INDEX items_chunk ON items(chunk_id);""")
    key = "ab" * 32
    old.execute("INSERT INTO items VALUES ('j', ?, ?, 1, 1, 'failed', 2, 400, 'ClientError', 'bad')",
                (custom_id_of(key), key))
    old.commit()
    old.close()
    state = BatchState(path)
    state.create_job("j")
    chunk = state.add_chunk("j", 1, "mock-model", "", 0, 0, "")
    assert chunk == 1 and state.chunk_items(1) == [key]
    assert state.outcomes("j", [key]) == {key: ("failed", 400, "ClientError", "bad")}
    assert BatchState(path).counts("j") == {"failed": 1}  # opened again: nothing left to migrate


def test_output_lines_are_decoded_once_whatever_their_spelling() -> None:
    body = {"id": "c", "choices": [{"message": {"content": 'say "body": {}'}}], "note": {"body": 1}}
    for line in (json.dumps({"id": "x", "custom_id": "c1", "response": {"status_code": 200, "body": body}}),
                 json.dumps({"custom_id": "c1", "response": {"body": body, "status_code": 200}}, indent=1),
                 json.dumps({"error": {"body": "e"}, "custom_id": "c1", "response": {"status_code": 200, "body": body}})):
        record, text = parse_output_line(line)
        assert record["response"]["body"] == body and record["custom_id"] == "c1"
        assert text is None or json.loads(text) == body
    assert parse_output_line('{"custom_id": "c1", "response": {"status_code": 200, "body": {"a"') is None
    assert parse_output_line('{"custom_id": "c2", "response": null, "error": {"code": "batch_expired"}}')[0][
        "error"]["code"] == "batch_expired"


def test_ingest_stores_each_answer_with_its_request_in_one_lot(tmp_path: Path) -> None:
    state = BatchState(tmp_path / "state.db")
    state.create_job("j")
    reqs = _VARIED[:3]
    write_chunks(state, "j", tmp_path / "files", keyed(reqs, "mock-model", None), ChunkLimits())
    chunk = state.chunks("j")[0]
    rows = list(keys_of(reqs, "mock-model", None))
    out = tmp_path / "out.jsonl"
    out.write_text("\n".join(json.dumps({
        "custom_id": custom_id_of(key), "response": {"status_code": 200, "body": {
            "choices": [{"message": {"content": f"answer {i}"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}}}})
        for i, (_, _, key) in enumerate(rows[:2])) + "\n")
    cache = PromptCache(tmp_path / "cache")
    counts = ingest_chunk(state, cache, None, {**chunk, "batch_id": "batch_1"}, str(out), None)
    assert (counts.done, counts.requeued) == (2, 1)
    stored = {row.key: row for page in cache.iter_rows(include_raw=True) for row in page}
    for i, (request, _, key) in enumerate(rows[:2]):
        row = stored[key]
        assert (row.text, row.input_tokens, row.output_tokens, row.finish_reason) == (f"answer {i}", 3, 2, "stop")
        assert row.messages == list(request.messages) and row.model == "mock-model"
        assert row.params == {"temperature": request.temperature, "max_tokens": request.max_tokens,
                              "extra": request.extra}
        assert row.raw["minima_batch"] == {"batch_id": "batch_1", "custom_id": custom_id_of(key)}
    assert state.outcomes("j", [k for _, _, k in rows]) == {
        rows[0][2]: ("done", 200, None, None), rows[1][2]: ("done", 200, None, None),
        rows[2][2]: ("requeue", None, "BatchLineMissing", "in neither the output nor the error file")}
    cache.close()


def test_the_cache_commits_a_lot_in_order_with_single_puts(tmp_path: Path) -> None:
    import pytest

    from minima_nb.cache import CacheRow
    from minima_nb.errors import CacheError

    cache = PromptCache(tmp_path / "cache")
    cache.put(CacheRow("k1", None, "m", [{"role": "user", "content": "a"}], {}, "first"))
    lot = [("k1", None, "m", '[{"role": "user", "content": "a"}]', "{}", "second", None, 1, 2, "stop", None, 1.0),
           ("k2", None, "m", '[{"role": "user", "content": "b"}]', "{}", "other", '{"id": "x"}', 3, 4, None, None, 1.0)]
    cache.put_many(lot)
    cache.put(CacheRow("k2", None, "m", [{"role": "user", "content": "b"}], {}, "third"))
    cache.flush()
    assert {k: v.text for k, v in cache.get_many(["k1", "k2"]).items()} == {"k1": "second", "k2": "third"}
    with pytest.raises(ValueError, match="only string answers"):
        cache.put_many([("k3", None, "m", "[]", "{}", None, None, None, None, None, None, 1.0)])
    cache.close()
    with pytest.raises(CacheError, match="closed"):
        cache.put_many(lot)
