"""Scenario 11: a provider batch job of 200,000 and 1,000,000 rows, the client's two bulk paths.

One child process per size and round (``python -m benchmarks.scenarios_batchapi '<spec>'``),
with the mock server in a process of its own so its files do not count in the client's memory:

* **build + upload**: requests made lazily from a generator, their cache keys, the JSONL input
  files (50,000 lines each, streamed to disk, items recorded in the state file), and every file
  uploaded to the mock's ``/v1/files`` (multipart, streamed);
* **ingest**: the output files a provider would return (one 200 line per request, written
  untimed beforehand) read into a fresh prompt cache, committed, with the items' outcomes.

Peak memory is the child's peak RSS over its RSS before the job. The targets: each path at
least 200,000 rows/s, and peak memory flat from 200,000 to 1,000,000 rows.

Two floors are measured in the same child, so a rate can be read against what this machine
does at that moment (six sessions share two cores): the *line floor* spells each request's
line with ``json.dumps`` and writes it (no key, no state), and the *SQLite floor* commits the
very rows the ingest stored into a fresh cache file with bare ``executemany`` in 50,000-row
transactions (no parsing). The load average is read at the start and the end of each child.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .harness import run_child
from .report import Section, Target, count, median, ratio, size, spread
from .workload import child_main, peak_rss_bytes, rss_bytes

SIZES = (200_000, 1_000_000)
QUICK_SIZES = (20_000, 100_000)


def _serve(ready: Any, stop: Any, port: Any) -> None:
    import os

    from minima_nb.testing import MockServer

    if hasattr(os, "sched_setaffinity"):  # the mock on the last core, as the other scenarios' upstream
        os.sched_setaffinity(0, {max(0, (os.cpu_count() or 1) - 1)})

    with MockServer() as server:
        port.value = server.port
        ready.set()
        stop.wait()


def _requests(n: int) -> Iterator[Any]:
    from minima_nb.types import MinimaLlmRequest

    for i in range(n):
        yield MinimaLlmRequest(request_id=f"r{i}", messages=[
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": f"Classify the sentiment of review number {i}: it was fine, really."}])


def _generate_s(n: int) -> float:
    """Seconds the benchmark's own request generator takes (inside the build figure)."""
    started = time.perf_counter()
    for _ in _requests(n):
        pass
    return time.perf_counter() - started


def _fake_outputs(state: Any, chunk: dict[str, Any], directory: Path) -> str:
    """What a provider returns for a chunk: a 200 line per input line (untimed)."""
    from minima_nb.integrations.batchapi.chunks import custom_id_in, read_lines

    path = directory / f"out-{chunk['chunk_id']}.jsonl"
    with open(path, "w", encoding="utf-8") as out:
        for number, line in enumerate(read_lines(chunk["path"])):
            body = {"id": f"chatcmpl-{number}", "object": "chat.completion", "created": 0, "model": "mock-model",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "positive"},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 22, "completion_tokens": 1, "total_tokens": 23}}
            out.write(json.dumps({"id": f"batch_req_{number}", "custom_id": custom_id_in(line),
                                  "response": {"status_code": 200, "request_id": f"req_{number}", "body": body},
                                  "error": None}) + "\n")
    return str(path)


def _line_floor(n: int, directory: Path) -> tuple[float, float]:
    """Seconds (wall, CPU) to spell ``n`` lines with ``json.dumps`` and write them: no key, no state."""
    from minima_nb.engine.wire import build_payload

    started, cpu = time.perf_counter(), time.process_time()
    with open(directory / "floor.jsonl", "wb") as out:
        for request in _requests(n):
            out.write((json.dumps({"custom_id": request.request_id, "method": "POST", "url": "/v1/chat/completions",
                                   "body": build_payload(request, "mock-model")}) + "\n").encode())
    return time.perf_counter() - started, time.process_time() - cpu


def _sqlite_floor(cache_path: Path, directory: Path) -> tuple[float, float]:
    """Seconds (wall, CPU) to commit the rows the ingest stored into a fresh file, bare (50,000 per
    transaction)."""
    import sqlite3

    from minima_nb.cache import COLUMNS, PromptCache

    PromptCache(directory / "floor-cache").close()
    source = sqlite3.connect(cache_path)
    rows = source.execute(f"SELECT {', '.join(COLUMNS)} FROM responses")
    target = sqlite3.connect(directory / "floor-cache" / cache_path.name, isolation_level=None)
    target.execute("PRAGMA synchronous=NORMAL")
    insert = f"INSERT INTO responses({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    spent = cpu = 0.0
    while True:
        lot = rows.fetchmany(50_000)
        if not lot:
            break
        started, cpu_started = time.perf_counter(), time.process_time()
        target.execute("BEGIN IMMEDIATE")
        target.executemany(insert, lot)
        target.execute("COMMIT")
        spent, cpu = spent + time.perf_counter() - started, cpu + time.process_time() - cpu_started
    source.close()
    target.close()
    return spent, cpu


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """The child: one job of ``spec["n"]`` rows."""
    import os

    from minima_nb.cache import PromptCache
    from minima_nb.integrations.batchapi.chunks import ChunkLimits, keyed, write_chunks
    from minima_nb.integrations.batchapi.client import BatchClient
    from minima_nb.integrations.batchapi.ingest import ingest_chunk
    from minima_nb.integrations.batchapi.state import BatchState

    n = int(spec["n"])
    context = multiprocessing.get_context("spawn")
    ready, stop, port = context.Event(), context.Event(), context.Value("i", 0)
    server = context.Process(target=_serve, args=(ready, stop, port), daemon=True)
    server.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the mock server did not start")
        root = Path(tempfile.mkdtemp(prefix="batchbench-", dir=spec.get("dir")))
        state = BatchState(root / "state.db")
        state.create_job("bench", prefix="bench")
        client = BatchClient(f"http://127.0.0.1:{port.value}/v1", "sk-bench", timeout_s=600)
        load_start = os.getloadavg()[0]
        gc.collect()
        base = rss_bytes()
        started, cpu_started = time.perf_counter(), time.process_time()
        chunk_ids, _, unique = write_chunks(state, "bench", root / "files", keyed(_requests(n), "mock-model", None),
                                            ChunkLimits())
        built = time.perf_counter()

        async def upload() -> None:
            for chunk in state.chunks("bench"):
                await client.upload(chunk["path"], Path(chunk["path"]).name)
            await client.aclose()

        asyncio.run(upload())
        uploaded, cpu_uploaded = time.perf_counter(), time.process_time()
        peak_build = peak_rss_bytes() - base
        outputs = {c["chunk_id"]: _fake_outputs(state, c, root) for c in state.chunks("bench")}
        cache = PromptCache(root / "cache")
        gc.collect()
        before_ingest, cpu_before_ingest = time.perf_counter(), time.process_time()
        for chunk in state.chunks("bench"):
            ingest_chunk(state, cache, None, {**chunk, "batch_id": "batch_bench"}, outputs[chunk["chunk_id"]], None)
        cache.flush(timeout=600)
        ingested, cpu_ingested = time.perf_counter(), time.process_time()
        peak_all = peak_rss_bytes() - base
        stored = cache.count()
        cache.close()
        generate_s = _generate_s(n)
        line_floor_s = _line_floor(n, root)
        sqlite_floor_s = _sqlite_floor(cache.path, root)
        return {"n": n, "unique": unique, "chunks": len(chunk_ids), "build_s": built - started,
                "upload_s": uploaded - built, "ingest_s": ingested - before_ingest, "stored": stored,
                "peak_build": peak_build, "peak": peak_all, "done": state.counts("bench").get("done", 0),
                "generate_s": generate_s, "line_floor_s": line_floor_s[0], "sqlite_floor_s": sqlite_floor_s[0],
                "build_cpu_s": cpu_uploaded - cpu_started, "ingest_cpu_s": cpu_ingested - cpu_before_ingest,
                "line_floor_cpu_s": line_floor_s[1], "sqlite_floor_cpu_s": sqlite_floor_s[1],
                "load": (load_start, os.getloadavg()[0])}
    finally:
        stop.set()
        server.join(timeout=30)


def scenario_batchapi(workdir: Path, rounds: int, sizes: tuple[int, int], log: Any) -> Section:
    """Scenario 11: build+upload and ingest rates, peak memory at two sizes."""
    by_size: dict[int, list[dict[str, Any]]] = {}
    for n in sizes:
        for r in range(rounds):
            result = run_child("benchmarks.scenarios_batchapi", {"task": "batch", "n": n, "dir": str(workdir)},
                               workdir, timeout_s=1800)
            if "error" not in result:
                result.update(build_rows_s=n / (result["build_s"] + result["upload_s"]),
                              ingest_rows_s=n / result["ingest_s"],
                              upload_share=result["upload_s"] / (result["build_s"] + result["upload_s"]),
                              line_floor_rows_s=n / result["line_floor_s"],
                              sqlite_floor_rows_s=n / result["sqlite_floor_s"],
                              build_cpu_rows_s=n / result["build_cpu_s"], ingest_cpu_rows_s=n / result["ingest_cpu_s"],
                              line_floor_cpu_rows_s=n / result["line_floor_cpu_s"],
                              sqlite_floor_cpu_rows_s=n / result["sqlite_floor_cpu_s"])
                log(f"  {n:,} rows, round {r + 1}/{rounds}: build+upload {result['build_rows_s']:,.0f} rows/s "
                    f"(upload {result['upload_share']:.0%}), ingest {result['ingest_rows_s']:,.0f} rows/s, "
                    f"peak {size(result['peak'])}; floors: lines {result['line_floor_rows_s']:,.0f}, "
                    f"SQLite {result['sqlite_floor_rows_s']:,.0f} rows/s; per CPU-second: build+upload "
                    f"{result['build_cpu_rows_s']:,.0f}, ingest {result['ingest_cpu_rows_s']:,.0f}, floors "
                    f"{result['line_floor_cpu_rows_s']:,.0f} / {result['sqlite_floor_cpu_rows_s']:,.0f}; load "
                    f"{result['load'][0]:.1f}-{result['load'][1]:.1f}")
            else:
                log(f"  {n:,} rows, round {r + 1}/{rounds}: FAILED {result['error'][:300]}")
            by_size.setdefault(n, []).append(result)
    rows, targets = [], []
    ok = {n: [r for r in runs if "error" not in r] for n, runs in by_size.items()}
    for n in sizes:
        runs = ok[n]
        def pair(wall: str, cpu: str, runs: list[dict[str, Any]] = runs) -> str:
            return f"{spread([r[wall] for r in runs], count)} / {spread([r[cpu] for r in runs], count)}"

        rows.append([count(n), pair("build_rows_s", "build_cpu_rows_s"),
                     spread([100 * r["upload_share"] for r in runs], lambda v: f"{v:.0f} %"),
                     spread([100 * r["generate_s"] / (r["build_s"] + r["upload_s"]) for r in runs],
                            lambda v: f"{v:.0f} %"),
                     pair("line_floor_rows_s", "line_floor_cpu_rows_s"),
                     pair("ingest_rows_s", "ingest_cpu_rows_s"),
                     pair("sqlite_floor_rows_s", "sqlite_floor_cpu_rows_s"),
                     spread([r["peak"] for r in runs], size),
                     ", ".join(f"{r['load'][0]:.1f}-{r['load'][1]:.1f}" for r in runs),
                     str(all(r["stored"] == r["done"] == n for r in runs))])
    small, large = ok[sizes[0]], ok[sizes[1]]
    if large and small:
        build = median([r["build_rows_s"] for r in large])
        ingest = median([r["ingest_rows_s"] for r in large])
        growth = median([r["peak"] for r in large]) / max(1.0, median([r["peak"] for r in small]))
        targets = [Target("11", "building + uploading the JSONL ≥ 200,000 rows/s", f"{build:,.0f} rows/s",
                          build >= 200_000),
                   Target("11", "ingesting the output into the cache ≥ 200,000 rows/s", f"{ingest:,.0f} rows/s",
                          ingest >= 200_000),
                   Target("11", "peak memory flat from 200,000 to 1,000,000 rows",
                          f"peak {ratio(growth)} from {count(sizes[0])} to {count(sizes[1])} rows", growth <= 1.25)]
    notes = ["Requests come from a generator (its own time is inside the build figure) and are keyed, "
             "de-duplicated and written in windows of 5,000; each 50,000-line file is recorded in the state file "
             "and streamed to `/v1/files`. *upload* is the mock's share of build + upload (the mock runs in "
             "its own process); *generator* is the share of the benchmark's own request generator, timed "
             "apart (the requests a DataFrame already holds).",
             "Ingest reads each output file against its input file (for the request stored with each answer) "
             "and commits the answers and the items' outcomes; the download itself is not timed.",
             "Floors (same child, same moment): *lines* spells and writes each line with `json.dumps` only; "
             "*SQLite* commits the stored rows into a fresh cache file with bare `executemany`. "
             "Each rate is given per second of wall time and per second of the client process's CPU "
             "(all its threads): the second does not depend on how busy the machine is. "
             "Load: the 1-minute load average at the child's start and end (2 cores).",
             "Last column: every row stored in the cache and marked done in the state file."]
    return Section("11. Provider batch job: 1,000,000 rows through the batch API's client paths",
                   "One child per size and round; the mock server in its own process.",
                   ["rows", "build + upload (rows/s, wall / CPU)", "upload", "generator",
                    "line floor (wall / CPU)", "ingest (rows/s, wall / CPU)", "SQLite floor (wall / CPU)",
                    "peak memory over baseline", "load", "all rows stored"],
                   rows, notes, targets)


if __name__ == "__main__":
    child_main(measure)
