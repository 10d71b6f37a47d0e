"""Scenarios 4 and 6: reading a large prompt cache, through the accessor and out to Parquet.

Child tasks (``spec["task"]``):

* ``build``: fill a cache directory with ``n`` answered prompts by direct SQLite inserts in one
  transaction, using the real schema (the file is created by ``PromptCache``) and the real
  cache key of each prompt, so the library finds them as hits.
* ``accessor``: a fully cached re-run of an ``n``-row DataFrame through
  ``df.minima.generate("prompt", backend=backend, progress=False)``, timed end to end, and the
  bare SQLite rate on the same file: ``SELECT ... WHERE key IN (500 keys)`` over every key,
  the answer columns the library reads, on a fresh connection; then ``backend.lookup`` alone
  (the accessor's keys and reads) and ``backend.run_batched`` alone (the path of a caller
  with request objects) over the same prompts, their inputs built outside the timing.
* ``commit_floor``: the floor of scenario 3's cache-on cost: ``n`` rows shaped like the
  answers stored there (the real keys, messages, params and body) committed to a fresh cache
  file with the cache's own upsert, in lots of ``spec["lot"]`` rows, one ``BEGIN IMMEDIATE``
  transaction each, as the writer thread commits them; timed from creating the file (schema,
  WAL) to closing it (the final checkpoint), the rows built untimed. No Python per row but
  ``executemany``'s binding: what any client of this schema pays.
* ``export``: ``open_cache(dir).to_parquet(path)`` timed, with the process RSS sampled every
  few milliseconds for the peak over the RSS before the export; ``without_driver`` makes the
  ADBC driver unavailable, to time the sqlite3 fallback.
"""

from __future__ import annotations

import gc
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .workload import (
    API_KEY,
    MODEL,
    Timer,
    child_main,
    messages_of,
    peak_rss_bytes,
    prompts,
    rss_bytes,
)

READ_CHUNK = 500
_ANSWER_COLUMNS = "key, text, input_tokens, output_tokens, finish_reason, latency_s, model"
_PARAMS = json.dumps({"temperature": None, "max_tokens": None, "extra": None})


def _raw(i: int, text: str) -> str:
    """A chat.completion body like the ones servers send (about 300 bytes)."""
    return json.dumps({
        "id": f"chatcmpl-bench-{i}", "object": "chat.completion", "created": 1_700_000_000 + i,
        "model": MODEL, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}})


def _rows(count: int, offset: int):
    from minima_nb.cache import cache_key

    now = time.time()
    for i, prompt in enumerate(prompts(count, offset), start=offset):
        messages = messages_of(prompt)
        key = cache_key(MODEL, messages, None, None, None)[0]
        text = f"answer {i}: {prompt[:48]}"
        yield (key, None, MODEL, json.dumps(messages, ensure_ascii=False), _PARAMS, text,
               _raw(i, text), 12, 4, "stop", 0.05, now)


def build(spec: dict[str, Any]) -> dict[str, Any]:
    """Create ``spec["dir"]`` holding ``spec["n"]`` answered prompts; returns the time it took."""
    from minima_nb.cache import CACHE_FILENAME, COLUMNS, PromptCache

    PromptCache(spec["dir"]).close()  # the real schema, migrations and WAL mode
    path = Path(spec["dir"]) / CACHE_FILENAME
    conn = sqlite3.connect(path, isolation_level=None)
    with Timer() as t:
        # A bulk load into a file nobody else has open: no journal, no syncs; WAL mode back after.
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO responses({', '.join(COLUMNS)}) "
                         f"VALUES ({', '.join('?' * len(COLUMNS))})", _rows(spec["n"], spec.get("offset", 0)))
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")
    count = conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    conn.close()
    return {"rows": count, "build_s": t.wall_s, "bytes": path.stat().st_size}


def commit_floor(spec: dict[str, Any]) -> dict[str, Any]:
    """Commit ``spec["n"]`` answer rows to a fresh cache in lots of ``spec["lot"]``; CPU and wall."""
    from minima_nb.cache import CACHE_FILENAME
    from minima_nb.cache.file import open_file
    from minima_nb.cache.store import _UPSERT
    from minima_nb.cache.writer import connect

    rows, lot = list(_rows(spec["n"], 0)), max(1, int(spec["lot"]))
    directory = Path(spec["dir"])
    directory.mkdir(parents=True, exist_ok=True)
    with Timer() as t:
        path = directory / CACHE_FILENAME
        open_file(path)  # the schema and WAL mode, as PromptCache makes them
        conn = connect(path)
        for start in range(0, len(rows), lot):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_UPSERT, rows[start:start + lot])
            conn.execute("COMMIT")
        conn.close()
    return {"rows": len(rows), "cpu_s": t.cpu_s, "wall_s": t.wall_s}


def _bare_lookup(path: Path, keys: list[str]) -> tuple[float, int]:
    conn = sqlite3.connect(path)
    found = 0
    with Timer() as t:
        for start in range(0, len(keys), READ_CHUNK):
            chunk = keys[start:start + READ_CHUNK]
            sql = f"SELECT {_ANSWER_COLUMNS} FROM responses WHERE key IN ({','.join('?' * len(chunk))})"
            found += len(conn.execute(sql, chunk).fetchall())
    conn.close()
    return t.wall_s, found


def _cached_backend(spec: dict[str, Any]) -> Any:
    """A backend on the cache directory ``spec["dir"]``, unpaced (every answer is a hit)."""
    from minima_nb import MinimaLlmConfig, OpenAIMinimaLlm

    return OpenAIMinimaLlm(MinimaLlmConfig(base_url=spec["url"], model=MODEL, api_key=API_KEY,
                                           cache_dir=spec["dir"], rpm=0))


def accessor(spec: dict[str, Any]) -> dict[str, Any]:
    """Fully cached ``df.minima.generate`` over ``spec["n"]`` rows, and bare SQLite on the same file."""
    import pandas as pd

    import minima_nb  # noqa: F401  - registers the accessor
    from minima_nb.cache import CACHE_FILENAME, cache_key

    items = prompts(spec["n"])
    frame = pd.DataFrame({"prompt": items})
    keys = [cache_key(MODEL, messages_of(p), None, None, None)[0] for p in items]
    backend = _cached_backend(spec)
    out: dict[str, Any] = {"n": len(items)}
    if spec.get("bare_first"):
        out["bare_s"], out["bare_found"] = _bare_lookup(Path(spec["dir"]) / CACHE_FILENAME, keys)
    with Timer() as t:
        answers = frame.minima.generate("prompt", backend=backend, progress=False)
    out.update(accessor_s=t.wall_s, accessor_cpu_s=t.cpu_s, answered=int(answers.notna().sum()))
    stats = backend.cache_stats()
    out.update(hits=stats["hits"], misses=stats["misses"])
    backend.close()
    if not spec.get("bare_first"):
        out["bare_s"], out["bare_found"] = _bare_lookup(Path(spec["dir"]) / CACHE_FILENAME, keys)
    out["lookup_s"] = _lookup_only(spec, items)
    out["backend_s"] = _backend_only(spec, items)
    return out


def _lookup_only(spec: dict[str, Any], items: list[str]) -> float:
    """``backend.lookup(messages, text_only=True)`` alone: the keys and reads of the accessor's call."""
    backend = _cached_backend(spec)
    slots = [messages_of(p) for p in items]
    with Timer() as t:
        texts = backend.lookup(slots, text_only=True)
    backend.close()
    if any(text is None for text in texts):
        raise RuntimeError("the lookup-only re-run was not fully cached")
    return t.wall_s


def _backend_only(spec: dict[str, Any], items: list[str]) -> float:
    """``backend.run_batched`` over the same (cached) prompts: the path of a caller holding requests."""
    import asyncio

    from minima_nb import MinimaLlmRequest

    backend = _cached_backend(spec)
    requests = [MinimaLlmRequest(request_id=f"row-{i}", messages=messages_of(p)) for i, p in enumerate(items)]
    with Timer() as t:
        results = asyncio.run(backend.run_batched(requests, progress=False))
    backend.close()
    if not all(r.cached for r in results):
        raise RuntimeError("the backend-only re-run was not fully cached")
    return t.wall_s


class _RssSampler(threading.Thread):
    """Samples this process's RSS every ``interval_s`` until stopped; keeps the maximum."""

    def __init__(self, interval_s: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peak = rss_bytes()
        self._stop_event = threading.Event()

    def run(self) -> None:  # noqa: D102
        while not self._stop_event.wait(self.interval_s):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> int:
        """Stop sampling and return the peak seen."""
        self._stop_event.set()
        self.join(timeout=5)
        return max(self.peak, rss_bytes())


def export(spec: dict[str, Any]) -> dict[str, Any]:
    """``open_cache(dir).to_parquet(path)``: rows/s and peak RSS over the RSS before it."""
    from minima_nb.export import open_cache
    from minima_nb.export import pages as arrowpages

    if spec.get("without_driver"):
        arrowpages._adbc_connect = lambda: None  # noqa: SLF001  - measure the sqlite3 fallback
    target = Path(spec["path"])
    gc.collect()
    base = rss_bytes()
    sampler = _RssSampler()
    sampler.start()
    with Timer() as t:
        view = open_cache(spec["dir"])
        try:
            written = view.to_parquet(target, progress=False)
        finally:
            view.close()
    peak = sampler.stop()
    size = target.stat().st_size
    os.unlink(target)
    return {"rows": written["rows"], "export_s": t.wall_s, "export_cpu_s": t.cpu_s, "bytes": size,
            "peak_rss_over": peak - base, "maxrss_over": peak_rss_bytes() - base, "base_rss": base}


TASKS = {"build": build, "accessor": accessor, "export": export, "commit_floor": commit_floor}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Dispatch to the task named by ``spec["task"]``."""
    return TASKS[spec["task"]](spec)


if __name__ == "__main__":
    child_main(measure)
