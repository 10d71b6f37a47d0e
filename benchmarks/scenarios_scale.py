"""Scenarios about scale and the loop: 13 (a 1,000,000-row first pass), 14 (uvloop against asyncio).

Each ``scenario_*`` function runs its rounds through :func:`harness.run_child` (the child is
:mod:`.scale`) and returns a :class:`report.Section` holding its table, notes and targets.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .harness import Upstream, run_child
from .report import Section, Target, count, median, micro, percent, ratio, size, spread

CONCURRENCY = 64
FIRSTPASS_RUNS = ("aiohttp", "generate", "generate+progress")
FIRSTPASS_NAMES = {"aiohttp": "aiohttp, raw (the floor; no cache)",
                   "generate": "**minima_nb** `df.minima.generate`, cache on, `progress=False`",
                   "generate+progress": "**minima_nb** `df.minima.generate`, cache on, progress bar on"}
LOOP_RUNS = (("aiohttp", "asyncio"), ("aiohttp", "uvloop"), ("minima_nb", "asyncio"), ("minima_nb", "uvloop"),
             ("minima_nb-aiohttp", "asyncio"), ("minima_nb-aiohttp", "uvloop"))


def _fmt(value: float | None, fmt: Any) -> str:
    return "n/a" if value is None else fmt(value)


def _firstpass_child(upstream: Upstream, workdir: Path, run: str, n: int, trace: bool = False) -> dict:
    directory = workdir / f"firstpass-{run}"
    spec = {"task": "firstpass", "client": "aiohttp" if run == "aiohttp" else "generate", "url": upstream.url,
            "n": n, "progress": run.endswith("+progress"), "trace": trace, "dir": str(directory)}
    result = run_child("benchmarks.scale", spec, workdir, timeout_s=1800)
    shutil.rmtree(directory, ignore_errors=True)
    if "error" not in result and result["ok"] != n:
        result["error"] = f"only {result['ok']} of {n} answered"
    if "error" not in result and "cpu_s" in result:
        result.update(rows_s=n / result["wall_s"], cpu_us=result["cpu_s"] / n * 1e6)
    return result


def scenario_firstpass(upstream: Upstream, workdir: Path, rounds: int, n: int, log: Any) -> Section:
    """Scenario 13: ``n`` distinct prompts through ``df.minima.generate``, cache on, all misses."""
    per_round: list[dict[str, dict]] = []
    for r in range(rounds):
        results = {}
        order = FIRSTPASS_RUNS[r % 3:] + FIRSTPASS_RUNS[:r % 3]
        for run in order:
            results[run] = res = _firstpass_child(upstream, workdir, run, n)
            log(f"  round {r + 1}/{rounds} {run:18s} " + (
                f"{res['rows_s']:8,.0f} rows/s {res['cpu_us']:6,.0f} µs/row"
                + (f", {res['redraws']:,} redraws" if "redraws" in res else "")
                if "error" not in res else f"FAILED {res['error'][:300]}"))
        per_round.append(results)
    traced = _firstpass_child(upstream, workdir, "generate", n, trace=True)
    log("  traced run: " + (f"{traced['per_row_beyond_texts']:,.0f} B/row beyond the texts"
                            if "error" not in traced else f"FAILED {traced['error'][:300]}"))

    def column(run: str, name: str) -> list[float | None]:
        return [r[run].get(name) for r in per_round]

    def share(run: str) -> list[float | None]:
        return [r[run]["rows_s"] / r["aiohttp"]["rows_s"] if "rows_s" in r[run] and "rows_s" in r["aiohttp"]
                else None for r in per_round]

    def cpu_share(run: str) -> list[float | None]:
        return [r["aiohttp"]["cpu_us"] / r[run]["cpu_us"] if "cpu_us" in r[run] and "cpu_us" in r["aiohttp"]
                else None for r in per_round]

    rows = [[FIRSTPASS_NAMES[run], spread(column(run, "rows_s"), count), spread(column(run, "cpu_us"), micro),
             "100 %" if run == "aiohttp" else spread(share(run), percent),
             "100 %" if run == "aiohttp" else spread(cpu_share(run), percent),
             spread(column(run, "peak_rss"), size),
             spread(column(run, "redraws"), count) if run.endswith("+progress") else "–"] for run in FIRSTPASS_RUNS]
    slowdown = [r["generate"]["wall_s"] / r["generate+progress"]["wall_s"] - 1
                if "wall_s" in r["generate"] and "wall_s" in r["generate+progress"] else None for r in per_round]
    speed = median(share("generate"))
    by_cpu = median(cpu_share("generate"))
    redraws = median(column("generate+progress", "redraws"))
    wall = median(column("generate+progress", "wall_s"))
    per_row = traced.get("per_row_beyond_texts")
    notes = [
        "Progress bar: the notebook layer's real sink (`NotebookSink`, tqdm's text bar written to "
        "/dev/null outside a kernel), drawn by the caller's thread each time `run_sync` polls "
        f"(every 0.1 s) and throttled to one redraw per 0.2 s: {_fmt(redraws, count)} redraws over "
        f"{_fmt(wall, lambda v: f'{v:,.0f} s')} of run, the same count whatever the number of rows. "
        "progress=True against progress=False, wall time: "
        + spread([-s if s is not None else None for s in slowdown], percent) + " slower (negative: faster).",
        "Memory (a separate run, `progress=False`): Python allocations (tracemalloc) and Arrow's "
        "(`pyarrow.total_allocated_bytes`, where the Series keeps its strings) still live after the "
        "call with its Series held and a collection, over the pre-call baseline, minus the answers' "
        "UTF-8 bytes. " + (
            f"Retained {size(traced['retained'])} (Arrow {size(traced['arrow'])}), answers "
            f"{size(traced['texts'])}; {size(traced['held_by_results'])} of it goes with the Series. "
            f"Peak of traced Python memory during the call: {size(traced['traced_peak'])} "
            f"({size(traced['peak_per_row'])} per row)." if "error" not in traced
            else f"Traced run failed: {traced['error'][:300]}"),
        "Both rates are in the table: rows/s over wall time, and raw aiohttp's CPU per row over "
        "minima_nb's (what each would reach alone on one core); on a shared machine the two differ "
        "when others' load falls unevenly on the runs, and a 1,000,000-row run lasts minutes.",
        *[f"round {i + 1}, {run}: {res['error'][:400]}" for i, r in enumerate(per_round)
          for run, res in r.items() if "error" in res],
    ]
    section = Section(
        f"13. A {n:,}-row first pass: every prompt distinct, cache on",
        f"A DataFrame of {n:,} distinct prompts through `df.minima.generate(\"prompt\")` with a fresh "
        f"cache directory (every row a miss, every answer stored), `rpm=0`, {CONCURRENCY} workers and "
        f"requests in flight, against the 0 ms upstream; beside it raw aiohttp sending the same "
        f"{n:,} requests with {CONCURRENCY} in flight, in the same round. Each run in a fresh process "
        "after an untimed warm-up of 64 requests; the timed part is the whole call (lookups, requests, "
        "the batch, the cache's final commit, the Series).",
        ["run", "rows/s", "CPU per row", "rows/s ÷ raw aiohttp's", "raw aiohttp's CPU per row ÷ this",
         "peak RSS", "progress redraws"],
        rows, notes)
    section.targets = [
        Target("13", f"first pass of {n:,} rows ≥ 70 % of raw aiohttp's rows/s",
               f"{_fmt(speed, percent)} (by CPU per row, the rate on one free core: {_fmt(by_cpu, percent)})",
               None if speed is None else speed >= 0.70),
        Target("13", f"≤ 1 KB kept per row beyond the texts at {n:,} rows", _fmt(per_row, size),
               None if per_row is None else per_row <= 1024),
        Target("13", "progress bar: redraws bounded by time (≤ 5 per second of run, plus the first and the "
               "final one), no slowdown beyond noise (≤ 5 %)",
               f"{_fmt(redraws, count)} redraws in {_fmt(wall, lambda v: f'{v:,.0f} s')}, "
               f"{_fmt(median(slowdown), lambda v: percent(-v))} slower",
               None if redraws is None or wall is None or median(slowdown) is None
               else redraws <= 5.0 * wall + 2 and -median(slowdown) <= 0.05),  # type: ignore[operator]
    ]
    return section


def scenario_loops(upstream: Upstream, workdir: Path, rounds: int, n: int, log: Any) -> Section:
    """Scenario 14: minima_nb's CPU per request on asyncio's loop and on uvloop, beside raw aiohttp's."""
    per_round: list[dict[tuple[str, str], dict]] = []
    for r in range(rounds):
        results = {}
        order = LOOP_RUNS[r % len(LOOP_RUNS):] + LOOP_RUNS[:r % len(LOOP_RUNS)]
        for client, loop in order:
            spec = {"task": "loops", "client": client, "loop": loop, "url": upstream.url, "n": n}
            res = run_child("benchmarks.scale", spec, workdir)
            if "error" not in res and res["ok"] == n:
                res.update(req_s=n / res["wall_s"], cpu_us=res["cpu_s"] / n * 1e6)
            else:
                res.setdefault("error", f"only {res.get('ok')} of {n} answered")
            results[(client, loop)] = res
            log(f"  round {r + 1}/{rounds} {client:17s} on {loop:7s} " + (
                f"{res['req_s']:8,.0f} req/s {res['cpu_us']:5,.0f} µs/req (loop: {res['loop_ran']})"
                if "cpu_us" in res else f"FAILED {res['error'][:300]}"))
        per_round.append(results)

    def column(run: tuple[str, str], name: str) -> list[float | None]:
        return [r[run].get(name) for r in per_round]

    def over(top: tuple[str, str], bottom: tuple[str, str]) -> list[float | None]:
        return [r[top]["cpu_us"] / r[bottom]["cpu_us"] if "cpu_us" in r[top] and "cpu_us" in r[bottom]
                else None for r in per_round]

    names = {"aiohttp": "aiohttp, raw", "minima_nb": "**minima_nb** run_batched (private loop thread, http1 transport: the default)",
             "minima_nb-aiohttp": "minima_nb run_batched (private loop thread, `transport=\"aiohttp\"`)"}
    rows = [[f"{names[client]} on {loop}", spread(column((client, loop), "req_s"), count),
             spread(column((client, loop), "cpu_us"), micro),
             spread(over((client, loop), ("aiohttp", loop)), ratio),
             "–" if loop == "asyncio" else spread(over((client, "uvloop"), (client, "asyncio")), ratio)]
            for client, loop in LOOP_RUNS]
    mismatched = sorted({f"{c} asked {lp}, ran {r[(c, lp)]['loop_ran']}" for r in per_round
                         for c, lp in LOOP_RUNS if r[(c, lp)].get("loop_ran", lp) != lp})
    ours = median(over(("minima_nb", "uvloop"), ("minima_nb", "asyncio")))
    vs_floor = median(over(("minima_nb", "uvloop"), ("aiohttp", "uvloop")))
    transports = {loop: median(over(("minima_nb", loop), ("minima_nb-aiohttp", loop))) for loop in ("asyncio", "uvloop")}
    notes = [
        "minima_nb is called from sync code (`run_sync(backend.run_batched(...))`), so the batch runs "
        "on the private loop thread: on uvloop when it is installed, on asyncio's loop with "
        "`MINIMA_UVLOOP=0`. The loop each run really used is read back from the engine: "
        + ("; ".join(mismatched) if mismatched else "always the one asked for") + ".",
        "Raw aiohttp runs under `asyncio.run` or `uvloop.run` in the main thread.",
        "The transports: minima_nb's CPU per request on its http1 transport ÷ on aiohttp's, the rest "
        f"of the engine the same: {_fmt(transports['asyncio'], ratio)} on asyncio's loop, "
        f"{_fmt(transports['uvloop'], ratio)} on uvloop. The http1 transport (minima_nb/engine/http1.py) "
        "sends each request over kept-alive asyncio protocol connections and parses answers with httptools.",
        *[f"round {i + 1}, {c} on {lp}: {res['error'][:400]}" for i, r in enumerate(per_round)
          for (c, lp), res in r.items() if "error" in res],
    ]
    section = Section(
        f"14. Event loops: {n:,} requests, concurrency {CONCURRENCY}, 0 ms latency, asyncio against uvloop",
        f"Scenario 1's workload ({n:,} distinct requests, {CONCURRENCY} in flight, cache off, "
        "`progress=False`) for minima_nb (on each of its transports, http1 and aiohttp) and raw "
        "aiohttp, each on asyncio's loop and on uvloop, "
        "in a rotating order, a fresh process per run after an untimed warm-up of 64 requests.",
        ["client and loop", "requests/s", "CPU per request", "CPU ÷ raw aiohttp's on the same loop",
         "CPU on uvloop ÷ on asyncio"], rows, notes)
    section.targets = [
        Target("14", "minima_nb's private loop runs on uvloop when installed; its CPU/request there (÷ on asyncio)",
               _fmt(ours, ratio), None if ours is None else ours < 1.0 and not mismatched),
        Target("14", "minima_nb CPU per request on uvloop ≤ 2× raw aiohttp's on uvloop",
               _fmt(vs_floor, ratio), None if vs_floor is None else vs_floor <= 2.0),
    ]
    return section
