"""Tests of the SQLite prompt cache: keys, round trips, the writer thread, file errors, processes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from minima_nb.cache import (
    CACHE_FILENAME,
    SCHEMA_VERSION,
    CachedAnswer,
    CacheRow,
    KeyTracer,
    PromptCache,
    cache_key,
    canonical_json,
    normalise_numbers,
)
from minima_nb.errors import CacheError

MESSAGES = [{"role": "user", "content": "What is 2+2?"}]


def make_row(key: str, text: str = "four", **fields) -> CacheRow:
    """A row with plausible request fields."""
    return CacheRow(key=key, namespace=None, model="m1", messages=MESSAGES,
                    params={"temperature": 0, "max_tokens": 5, "extra": None}, text=text, **fields)


@pytest.fixture
def cache(tmp_path):
    """An open cache in a fresh directory, closed after the test."""
    with PromptCache(tmp_path / "cache") as opened:
        yield opened


def rows_in_file(path: Path) -> int:
    """Count rows with a plain sqlite3 connection (no minima_nb code involved)."""
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


# -- keys ---------------------------------------------------------------------------------------


def test_integral_float_and_int_give_the_same_key():
    """temperature=0 and temperature=0.0 (also inside extra) hash alike."""
    a = cache_key("m", MESSAGES, 0, 10, {"top_p": 1})
    b = cache_key("m", MESSAGES, 0.0, 10.0, {"top_p": 1.0})
    assert a == b
    assert cache_key("m", MESSAGES, 0.5, 10, None) != cache_key("m", MESSAGES, 0, 10, None)


def test_normalise_numbers_recurses_and_leaves_bools():
    """Nested floats become ints, tuples lists; bools and non-integral floats stay."""
    value = {"a": (1.0, [2.0, {"b": 3.5}]), "flag": True, "off": False, "n": None}
    assert normalise_numbers(value) == {"a": [1, [2, {"b": 3.5}]], "flag": True, "off": False, "n": None}
    assert normalise_numbers(True) is True
    assert canonical_json({"x": (1.0, True)}) == '{"x":[1,true]}'


def test_dict_order_does_not_change_key():
    """Messages and extra with keys in another order give the same key."""
    a = cache_key("m", [{"role": "user", "content": "hi"}], 0, None, {"seed": 1, "top_p": 0.9})
    b = cache_key("m", [{"content": "hi", "role": "user"}], 0, None, {"top_p": 0.9, "seed": 1})
    assert a == b


def test_namespace_separates_keys():
    """The same request under two namespaces, or none, gets three different keys."""
    keys = {cache_key("m", MESSAGES, 0, None, None, namespace=ns)[0] for ns in (None, "p1", "p2")}
    assert len(keys) == 3


def test_key_without_namespace_is_stable():
    """Without a namespace the key is the sha256 of the documented canonical JSON."""
    key, canonical = cache_key("gpt-x", [{"role": "user", "content": "héllo"}], 0.0, 16, None)
    expected = ('{"extra":null,"max_tokens":16,"messages":[{"content":"héllo","role":"user"}],'
                '"model":"gpt-x","temperature":0}')
    assert canonical == expected
    assert key == hashlib.sha256(expected.encode("utf-8")).hexdigest()


def test_empty_extra_is_the_same_request_as_none():
    """extra={} sends the same request as extra=None, so it hits the same entry."""
    assert cache_key("m", MESSAGES, 0, None, {}) == cache_key("m", MESSAGES, 0, None, None)


def test_trace_file_gets_one_json_line_per_key_from_many_threads(tmp_path):
    """KeyTracer appends parseable JSONL lines, even when threads trace at once."""
    tracer = KeyTracer(tmp_path / "trace.jsonl")
    key, canonical = cache_key("m", MESSAGES, 0, None, None)

    def trace_many():
        for _ in range(50):
            tracer.trace(key, canonical)

    threads = [threading.Thread(target=trace_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    tracer.close()
    lines = (tmp_path / "trace.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 200
    assert all(json.loads(line) == {"key": key, "canonical": canonical} for line in lines)


# -- round trips --------------------------------------------------------------------------------


def test_open_creates_directory_and_empty_cache(tmp_path):
    """Opening a missing directory creates it with an empty cache file."""
    with PromptCache(tmp_path / "a" / "b") as cache:
        assert cache.path == tmp_path / "a" / "b" / CACHE_FILENAME
        assert cache.path.exists()
        assert cache.count() == 0


def test_put_get_round_trip_with_unicode(cache):
    """Every answer field comes back as stored, unicode included."""
    text = "Ответ: 四 🤖 \u0000 end"
    cache.put(make_row("k1", text, input_tokens=7, output_tokens=3, finish_reason="stop", latency_s=0.25))
    cache.flush()
    assert cache.get("k1") == CachedAnswer(text, 7, 3, "stop", 0.25, "m1")
    assert cache.get("missing") is None


def test_one_megabyte_text_round_trip(cache):
    """A 1 MB answer is stored and read back intact."""
    text = "é" * (1 << 20)
    cache.put(make_row("big", text))
    cache.flush()
    assert cache.get("big").text == text


def test_get_raw_returns_the_stored_body(cache):
    """The raw response JSON is kept apart from lookups and returned on request."""
    raw = {"id": "cmpl-1", "choices": [{"message": {"content": "four"}}], "usage": {"total_tokens": 9}}
    cache.put(make_row("k", raw=raw))
    cache.put(make_row("no-raw"))
    cache.flush()
    assert cache.get_raw("k") == raw
    assert cache.get_raw("no-raw") is None
    assert cache.get_raw("missing") is None


def test_get_many_looks_up_more_than_one_chunk_and_counts(cache):
    """get_many over 1,300 keys (3 chunks) finds the 1,200 stored and counts hits and misses."""
    for i in range(1200):
        cache.put(make_row(f"k{i}", f"t{i}"))
    cache.flush()
    found = cache.get_many([f"k{i}" for i in range(1300)])
    assert len(found) == 1200
    assert found["k1199"].text == "t1199"
    stats = cache.stats()
    assert (stats["hits"], stats["misses"]) == (1200, 100)


def test_flush_makes_rows_visible_to_other_readers(tmp_path):
    """After flush a second PromptCache and a plain sqlite3 connection both see the row."""
    with PromptCache(tmp_path) as writer:
        writer.put(make_row("k", "shared"))
        writer.flush()
        with PromptCache(tmp_path) as reader:
            assert reader.get("k").text == "shared"
        assert rows_in_file(writer.path) == 1


def test_rows_are_committed_without_flush(tmp_path):
    """A put row reaches the file on its own, seen from another connection within a bounded wait."""
    with PromptCache(tmp_path, flush_interval_s=0.05) as cache:
        cache.put(make_row("k"))
        seen = 0
        for _ in range(100):  # up to ~5 s
            seen = rows_in_file(cache.path)
            if seen:
                break
            time.sleep(0.05)
        assert seen == 1


def test_aflush_commits_from_an_event_loop(cache):
    """aflush can be awaited and leaves every row committed."""

    async def main():
        for i in range(10):
            cache.put(make_row(f"k{i}"))
        await cache.aflush()

    asyncio.run(main())
    assert rows_in_file(cache.path) == 10


def test_close_is_idempotent_and_commits(tmp_path):
    """close() commits queued rows, can be called twice, and later puts and reads raise."""
    cache = PromptCache(tmp_path, flush_interval_s=10)
    cache.put(make_row("k"))
    cache.close()
    cache.close()
    assert rows_in_file(cache.path) == 1
    with pytest.raises(CacheError, match="closed"):
        cache.put(make_row("k2"))
    with pytest.raises(CacheError, match="closed"):
        cache.get("k")
    assert "closed" in repr(cache)


def test_rows_written_and_read_from_other_threads(cache):
    """A row put from one thread is readable from the main thread and from a third thread."""
    writer = threading.Thread(target=lambda: (cache.put(make_row("t", "from thread")), cache.flush()))
    writer.start()
    writer.join(10)
    assert cache.get("t").text == "from thread"
    seen = []
    reader = threading.Thread(target=lambda: seen.append(cache.get("t").text))
    reader.start()
    reader.join(10)
    assert seen == ["from thread"]


def test_forced_replace_updates_the_answer(cache):
    """Putting a row under an existing key replaces its text and fields."""
    cache.put(make_row("k", "old", output_tokens=1))
    cache.flush()
    cache.put(make_row("k", "new", output_tokens=2))
    cache.flush()
    assert cache.get("k").text == "new"
    assert cache.get("k").output_tokens == 2
    assert cache.count() == 1


def test_none_text_is_refused(cache):
    """A row without text (a failure, or content: null) is never cached."""
    with pytest.raises(ValueError, match="text"):
        cache.put(make_row("k", None))
    cache.flush()
    assert cache.count() == 0


def test_file_is_plain_sqlite_with_the_documented_columns(cache):
    """Any SQLite tool can read the request and answer: JSON text columns, no pickles."""
    cache.put(make_row("k", raw={"a": 1}, created_at=123.0))
    cache.flush()
    conn = sqlite3.connect(cache.path)
    conn.row_factory = sqlite3.Row
    row = dict(conn.execute("SELECT * FROM responses").fetchone())
    version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    conn.close()
    assert list(row) == ["key", "namespace", "model", "messages", "params", "text", "raw",
                         "input_tokens", "output_tokens", "finish_reason", "latency_s", "created_at"]
    assert json.loads(row["messages"]) == MESSAGES
    assert json.loads(row["params"])["max_tokens"] == 5
    assert json.loads(row["raw"]) == {"a": 1}
    assert row["created_at"] == 123.0
    assert version == SCHEMA_VERSION


def test_created_at_defaults_to_now(cache):
    """A row with created_at=0 is stamped with the time it was put."""
    before = time.time()
    cache.put(make_row("k"))
    cache.flush()
    (row,) = next(cache.iter_rows())
    assert row.created_at >= before


# -- file errors --------------------------------------------------------------------------------


def test_non_sqlite_file_is_a_clear_error(tmp_path):
    """A minima_llm.db that is not SQLite raises CacheError naming the file."""
    (tmp_path / CACHE_FILENAME).write_bytes(b"this is not a database, " * 100)
    with pytest.raises(CacheError, match="not a SQLite database") as info:
        PromptCache(tmp_path)
    assert str(tmp_path / CACHE_FILENAME) in str(info.value)


def test_sqlite_file_of_another_app_is_refused(tmp_path):
    """A SQLite file with other tables is not taken over."""
    with sqlite3.connect(tmp_path / CACHE_FILENAME) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    with pytest.raises(CacheError, match="not a minima_nb cache.*notes"):
        PromptCache(tmp_path)
    with sqlite3.connect(tmp_path / CACHE_FILENAME) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"notes"}


def test_newer_schema_version_asks_for_an_upgrade(tmp_path):
    """A file written by a newer minima-nb is refused with 'upgrade minima-nb'."""
    PromptCache(tmp_path).close()
    with sqlite3.connect(tmp_path / CACHE_FILENAME) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(CacheError, match="upgrade minima-nb"):
        PromptCache(tmp_path)


def test_reopening_a_current_file_keeps_its_rows(tmp_path):
    """Opening an existing cache again neither migrates nor loses anything."""
    with PromptCache(tmp_path) as cache:
        cache.put(make_row("k"))
    with PromptCache(tmp_path) as cache:
        assert cache.get("k").text == "four"
    with sqlite3.connect(tmp_path / CACHE_FILENAME) as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION


def test_cache_dir_that_is_a_file_is_a_clear_error(tmp_path):
    """A cache_dir that cannot be a directory raises CacheError naming it and suggesting another."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    for directory in (blocker, blocker / "sub"):
        with pytest.raises(CacheError, match="cache_dir") as info:
            PromptCache(directory)
        assert str(directory) in str(info.value)


def test_write_failure_is_raised_by_the_next_flush(cache):
    """When the writer cannot write, flush raises CacheError with the reason, once."""
    with sqlite3.connect(cache.path) as conn:
        conn.execute("DROP TABLE responses")
    cache.put(make_row("k"))
    with pytest.raises(CacheError, match="no such table"):
        cache.flush()
    cache.flush()  # the error was reported; the writer is still alive


# -- processes, stats, export -------------------------------------------------------------------


def test_four_processes_write_one_cache_at_once(tmp_path):
    """4 processes x 2,000 rows into one fresh directory: every row lands, file intact, no error."""
    directory, go_file = tmp_path / "shared", tmp_path / "go"
    script = Path(__file__).with_name("_cache_writer_proc.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    procs = [subprocess.Popen([sys.executable, str(script), str(directory), str(w), "2000", str(go_file)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for w in range(4)]
    try:
        go_file.write_text("go")
        errors = [p.communicate(timeout=60)[1] for p in procs]
    finally:
        for p in procs:  # only on failure: do not leave a hung worker behind
            if p.poll() is None:
                p.kill()
                p.wait(10)
    for proc, err in zip(procs, errors, strict=True):
        assert proc.returncode == 0, err.decode()
        assert b"locked" not in err
    with sqlite3.connect(directory / CACHE_FILENAME) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(DISTINCT key) FROM responses").fetchone()[0] == 8000


def test_stats_counts_hits_misses_writes(cache):
    """stats reports path, entries, size and this process's hits, misses and writes."""
    for i in range(3):
        cache.put(make_row(f"k{i}"))
    cache.flush()
    cache.get("k0")
    cache.get("nope")
    cache.get_many(["k1", "k2", "nope"])
    stats = cache.stats()
    assert stats["path"] == str(cache.path)
    assert (stats["entries"], stats["writes"], stats["hits"], stats["misses"]) == (3, 3, 3, 2)
    assert stats["file_size_bytes"] > 0
    assert repr(cache) == f"PromptCache(path={str(cache.path)!r}, entries=3)"


def test_iter_rows_yields_chunks_and_filters(cache):
    """iter_rows returns every row in chunks, honours where_sql, and can leave raw out."""
    for i in range(7):
        cache.put(CacheRow(f"k{i}", "ns", f"model{i % 2}", MESSAGES, {"t": i}, f"t{i}", raw={"i": i}))
    cache.flush()
    chunks = list(cache.iter_rows(chunk_size=3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert [r.key for c in chunks for r in c] == [f"k{i}" for i in range(7)]
    assert chunks[0][1] == CacheRow("k1", "ns", "model1", MESSAGES, {"t": 1}, "t1", raw={"i": 1},
                                    created_at=chunks[0][1].created_at)
    filtered = [r for c in cache.iter_rows(where_sql="model = ?", params=("model1",), chunk_size=2,
                                           include_raw=False) for r in c]
    assert [r.key for r in filtered] == ["k1", "k3", "k5"]
    assert all(r.raw is None for r in filtered)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_forked_child_gets_a_clear_error(cache):
    """A cache opened before fork refuses use in the child instead of sharing connections."""
    cache.get("warm-up")  # the parent's thread now holds a connection the child inherits
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report what put and get raise, then leave without cleanup
        messages = []
        for call in (lambda: cache.put(make_row("k")), lambda: cache.get("k")):
            try:
                call()
                messages.append("no error")
            except CacheError as exc:
                messages.append(str(exc))
        os.write(write_fd, json.dumps(messages).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        messages = json.loads(pipe.read() or b"[]")
    os.waitpid(pid, 0)
    assert len(messages) == 2
    assert "forked" in messages[0]
    assert "another process" in messages[1]


def test_stored_messages_are_json_dumps_text_for_any_message_list(tmp_path):
    """The messages column holds json.dumps(messages) exactly, however the messages are spelled."""
    rng = random.Random(7)
    alphabet = ["a", "é", '"', "\\", "\n", "\x00", "\u2028", "😀", " ", "{", "]"]

    def text(n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, n)))

    def value():
        return text(8) if rng.random() < 0.8 else rng.choice([1, 1.5, None, True, [text(2)], {"k": text(2)}])

    cases = [[{text(4): value() for _ in range(rng.randint(0, 3))} for _ in range(rng.randint(0, 3))]
             for _ in range(300)]
    cases += [[{"role": "user", "content": "hi"}], ({"role": "user", "content": "tuple"},), []]
    with PromptCache(tmp_path) as cache:
        for i, messages in enumerate(cases):
            cache.put(CacheRow(f"k{i}", None, "m", messages, {}, "t"))
    conn = sqlite3.connect(cache.path)
    stored = dict(conn.execute("SELECT key, messages FROM responses").fetchall())
    conn.close()
    for i, messages in enumerate(cases):
        assert stored[f"k{i}"] == json.dumps(list(messages) if isinstance(messages, tuple) else messages,
                                             ensure_ascii=False)


def test_flush_does_not_wait_out_a_long_flush_interval(tmp_path):
    """flush() commits at once even when the writer would otherwise wait a minute between commits."""
    with PromptCache(tmp_path, flush_interval_s=60) as cache:
        cache.put(make_row("k1"))
        cache.flush(timeout=10)  # a CacheError after 10 s if the writer slept through it
        assert rows_in_file(cache.path) == 1
        cache.put(make_row("k2"))
        cache.flush(timeout=10)
        assert rows_in_file(cache.path) == 2


# -- the writer's lots --------------------------------------------------------------------------


def test_a_row_just_put_is_found_whatever_the_writer_is_doing(tmp_path):
    """Each of 3,000 rows is read back at once after its put, while the writer keeps taking and
    committing lots of 7 rows: no moment between staged and committed where a lookup misses."""
    with PromptCache(tmp_path, flush_interval_s=0, max_batch_rows=7) as cache:
        missed = []
        for i in range(3000):
            cache.put(make_row(f"k{i}", f"t{i}"))
            hit = cache.get(f"k{i}")
            if hit is None or hit.text != f"t{i}":
                missed.append(i)
            if i % 300 == 0 and cache.get_texts([f"k{i}", f"k{i // 2}"]) != {f"k{i}": f"t{i}", f"k{i // 2}": f"t{i // 2}"}:
                missed.append(-i)
        assert missed == []
        cache.flush()
        assert rows_in_file(cache.path) == 3000


def test_a_full_lot_is_committed_without_waiting_out_the_interval(tmp_path):
    """max_batch_rows rows are committed at once, even with a minute-long flush interval."""
    with PromptCache(tmp_path, flush_interval_s=60, max_batch_rows=10) as cache:
        for i in range(10):
            cache.put(make_row(f"k{i}"))
        seen = 0
        for _ in range(200):  # up to ~10 s
            seen = rows_in_file(cache.path)
            if seen == 10:
                break
            time.sleep(0.05)
        assert seen == 10


def test_a_key_put_twice_before_its_commit_keeps_the_last_answer(tmp_path):
    """Two answers under one key in one lot: lookups and the file both hold the second."""
    with PromptCache(tmp_path, flush_interval_s=60) as cache:
        cache.put(make_row("k", "first", output_tokens=1))
        cache.put(make_row("k", "second", output_tokens=2))
        assert cache.get("k") == CachedAnswer("second", None, 2, None, None, "m1")
        cache.flush()
        assert (cache.get("k").text, cache.count()) == ("second", 1)
        assert cache.stats()["writes"] == 1
