"""Scenarios about data at rest: 4 (cached re-run through the accessor), 5 (memory per result),
6 (Parquet export of a large cache).

Each ``scenario_*`` function runs its rounds through :func:`harness.run_child` and returns a
:class:`report.Section` holding its table, notes and targets.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .harness import Upstream, run_child
from .report import Section, Target, count, median, percent, ratio, size, spread

MEMORY_CLIENTS = {"minima_nb": "**minima_nb** run_batched", "minima_llm": "minima-llm 0.2.8 run_batched"}


def _build(workdir: Path, name: str, rows: int, log: Any) -> Path:
    directory = workdir / name
    result = run_child("benchmarks.cachebench", {"task": "build", "dir": str(directory), "n": rows}, workdir)
    if "error" in result:
        raise RuntimeError(f"could not build the {rows:,}-row cache: {result['error']}")
    log(f"  built a {rows:,}-row cache in {result['build_s']:.1f} s ({size(result['bytes'])})")
    return directory


def scenario_cached_rerun(upstream: Upstream, workdir: Path, rounds: int, n: int, log: Any) -> Section:
    """Scenario 4: a fully cached ``n``-row DataFrame through ``df.minima.generate``."""
    directory = _build(workdir, "cache-rerun", n, log)
    runs = []
    for r in range(rounds):
        spec = {"task": "accessor", "dir": str(directory), "n": n, "url": upstream.url, "bare_first": r % 2 == 1}
        result = run_child("benchmarks.cachebench", spec, workdir)
        if "error" not in result:
            result.update(accessor_rows_s=n / result["accessor_s"], bare_rows_s=n / result["bare_s"],
                          backend_rows_s=n / result["backend_s"], share=result["bare_s"] / result["accessor_s"],
                          backend_share=result["bare_s"] / result["backend_s"],
                          lookup_rows_s=n / result["lookup_s"], lookup_share=result["bare_s"] / result["lookup_s"])
        runs.append(result)
        log(f"  round {r + 1}/{rounds} " + (f"accessor {result['accessor_rows_s']:,.0f} rows/s, bare SQLite "
                                            f"{result['bare_rows_s']:,.0f} rows/s, misses {result['misses']}"
                                            if "error" not in result else f"FAILED {result['error'][:300]}"))
    shutil.rmtree(directory, ignore_errors=True)
    ok = [r for r in runs if "error" not in r]
    rows = [["`df.minima.generate(\"prompt\", backend=backend, progress=False)`",
             spread([r["accessor_rows_s"] for r in ok], count), spread([r["share"] for r in ok], percent)],
            ["of which `backend.lookup(messages, text_only=True)` alone (keys and reads; the lists built untimed)",
             spread([r["lookup_rows_s"] for r in ok], count), spread([r["lookup_share"] for r in ok], percent)],
            ["for comparison, `backend.run_batched(requests)` over the same rows (requests built untimed)",
             spread([r["backend_rows_s"] for r in ok], count), spread([r["backend_share"] for r in ok], percent)],
            ["bare sqlite3: `SELECT ... WHERE key IN (500 keys)` over every key, same file",
             spread([r["bare_rows_s"] for r in ok], count), "100 %"]]
    notes = [f"Every row a hit in every round: {all(r['misses'] == 0 and r['answered'] == n for r in ok)} "
             f"(cache misses {sorted({r['misses'] for r in ok})}).",
             "The accessor reads cached rows in bulk through `backend.lookup` (per row: the SHA-256 "
             "cache key of the canonical JSON and its text, no request or response object); only "
             "misses become requests for `run_batched`. Its own work (prompts to message lists, "
             "texts to a Series) is the difference between the first two rows. `run_batched` is the "
             "path of a caller holding request objects: it also builds a response object per row.",
             *[f"round failed: {r['error'][:400]}" for r in runs if "error" in r]]
    reached = median(r["accessor_rows_s"] for r in ok)
    section = Section(
        f"4. A fully cached re-run: {n:,} rows through the pandas accessor",
        f"A cache of {n:,} answered prompts is built by direct SQLite inserts (the real schema, the real "
        "keys); each round a fresh process builds the DataFrame (not timed) and times "
        "`df.minima.generate` end to end (keys, lookups, results, the Series), then times bare "
        "batched lookups of the same keys on the same file in the same process; pinned to one core.",
        ["path", "rows/s", "share of the bare SQLite rate"], rows, notes)
    share = median(r["share"] for r in ok)
    section.targets = [Target("4", "≥ 100,000 rows/s end to end", "n/a" if reached is None else f"{reached:,.0f} rows/s",
                              None if reached is None else reached >= 100_000),
                       Target("4", "≥ 75 % of the bare SQLite rate in the same run",
                              "n/a" if share is None else percent(share), None if share is None else share >= 0.75)]
    return section


def scenario_memory(upstream: Upstream, workdir: Path, rounds: int, n: int, log: Any) -> Section:
    """Scenario 5: memory the results of an ``n``-row batch keep, minima_nb against minima-llm."""
    runs: dict[str, dict[str, list[dict]]] = {c: {"trace": [], "rss": []} for c in MEMORY_CLIENTS}
    for r in range(rounds):
        for client in (MEMORY_CLIENTS if r % 2 == 0 else list(MEMORY_CLIENTS)[::-1]):
            for mode in ("rss", "trace"):
                spec = {"client": client, "url": upstream.url, "n": n, "mode": mode}
                result = run_child("benchmarks.memory", spec, workdir)
                runs[client][mode].append(result)
                log(f"  round {r + 1}/{rounds} {client:10s} {mode:5s} " + (
                    f"{result.get('per_row_beyond_texts', result.get('rss_per_row', 0)):,.0f} B/row"
                    if "error" not in result else f"FAILED {result['error'][:300]}"))
    rows, notes = [], []
    for client, name in MEMORY_CLIENTS.items():
        traced = [r for r in runs[client]["trace"] if "error" not in r and r["ok"] == n]
        resident = [r for r in runs[client]["rss"] if "error" not in r and r["ok"] == n]
        rows.append([name, spread([r["per_row_beyond_texts"] for r in traced], size),
                     spread([r["results_per_row_beyond_texts"] for r in traced], size),
                     spread([r["texts"] / n for r in traced], size),
                     spread([r["rss_per_row"] for r in resident], size),
                     spread([r["peak_rss_per_row"] for r in resident], size)])
        notes += [f"{client} failed: {r['error'][:300]}" for r in runs[client]["trace"] + runs[client]["rss"]
                  if "error" in r]
    ours = median(r["per_row_beyond_texts"] for r in runs["minima_nb"]["trace"] if "error" not in r)
    theirs = median(r["per_row_beyond_texts"] for r in runs["minima_llm"]["trace"] if "error" not in r)
    if ours and theirs:
        notes.append(f"minima-llm 0.2.8 keeps {ratio(theirs / ours)} as much per row beyond the texts.")
    section = Section(
        f"5. Memory kept per result: {n:,} rows",
        f"One batch of {n:,} requests (cache off), the results kept. Traced: Python allocations "
        "(tracemalloc) still live after the batch and a garbage collection, over the pre-batch "
        "baseline, minus the answer strings themselves; \"held by the results\" is what dropping the "
        "results list frees. RSS: a separate run without tracing, resident memory after the batch "
        "and at its peak, over the RSS before it (texts included). A warm-up batch of 64 requests "
        "first loads what each client imports lazily.",
        ["client", "retained per row beyond the texts", "of which held by the results", "answer text per row",
         "RSS after, per row", "peak RSS, per row"], rows, notes)
    section.targets = [Target("5", "≤ 1 KB retained per row beyond the answer texts",
                              "n/a" if ours is None else size(ours), None if ours is None else ours <= 1024)]
    return section


def scenario_export(workdir: Path, rounds: int, sizes: tuple[int, int], log: Any) -> Section:
    """Scenario 6: ``open_cache(dir).to_parquet(path)`` of a small and a large cache."""
    runs: dict[int, list[dict]] = {}
    without_driver: list[dict] = []  # the large cache again, through the sqlite3 fallback
    for rows_n in sizes:
        directory = _build(workdir, f"cache-export-{rows_n}", rows_n, log)
        runs[rows_n] = []
        for r in range(rounds):
            for fallback in (False, True) if rows_n == sizes[-1] else (False,):
                spec = {"task": "export", "dir": str(directory), "path": str(workdir / f"export-{rows_n}.parquet"),
                        "without_driver": fallback}
                result = run_child("benchmarks.cachebench", spec, workdir)
                if "error" not in result:
                    result["rows_s"] = result["rows"] / result["export_s"]
                (without_driver if fallback else runs[rows_n]).append(result)
                log(f"  round {r + 1}/{rounds} export {rows_n:,} rows{' (sqlite3 path)' if fallback else ''}: " + (
                    f"{result['rows_s']:,.0f} rows/s, peak +{size(result['peak_rss_over'])}"
                    if "error" not in result else f"FAILED {result['error'][:300]}"))
        shutil.rmtree(directory, ignore_errors=True)
    table_rows, peaks = [], {}
    for rows_n, results in runs.items():
        ok = [r for r in results if "error" not in r]
        peaks[rows_n] = median(r["peak_rss_over"] for r in ok)
        table_rows.append([f"{rows_n:,}", spread([r["rows_s"] for r in ok], count),
                           spread([r["peak_rss_over"] for r in ok], size),
                           spread([r["bytes"] for r in ok], size)])
    ok = [r for r in without_driver if "error" not in r]
    table_rows.append([f"{sizes[-1]:,}, without the ADBC driver (the sqlite3 fallback)",
                       spread([r["rows_s"] for r in ok], count), spread([r["peak_rss_over"] for r in ok], size),
                       spread([r["bytes"] for r in ok], size)])
    small, large = sizes
    rate = median(r.get("rows_s") for r in runs[large])
    flat = (peaks[large] / peaks[small]) if peaks.get(small) and peaks.get(large) else None
    notes = [f"Peak memory at {large:,} rows ÷ at {small:,} rows: {ratio(flat) if flat else 'n/a'} "
             "(1.0× is flat: memory does not grow with the cache).",
             "Pages are read straight into Arrow by the ADBC SQLite driver (minima_nb/export/pages.py); "
             "the last row is the same export with the driver made unavailable, the path taken "
             "when it fails. Pinned to one core, so the Parquet writer thread shares it.",
             *[f"failed: {r['error'][:300]}" for results in (*runs.values(), without_driver)
               for r in results if "error" in r]]
    section = Section(
        f"6. Parquet export of a {large:,}-row cache",
        "Caches built by direct SQLite inserts with the real schema (each row: a ~60-character prompt, "
        "its answer, a ~330-byte raw body); each round a fresh process times "
        "`minima_nb.export.open_cache(dir).to_parquet(path, progress=False)` and samples its RSS "
        "every 5 ms for the peak over the RSS before the export.",
        ["cache rows", "rows/s", "peak memory over baseline", "Parquet file"], table_rows, notes)
    section.targets = [
        Target("6", "≥ 300,000 rows/s", "n/a" if rate is None else f"{rate:,.0f} rows/s",
               None if rate is None else rate >= 300_000),
        Target("6", "flat memory", "n/a" if flat is None else f"peak {ratio(flat)} from {small:,} to {large:,} rows",
               None if flat is None else flat <= 1.25),
    ]
    return section
