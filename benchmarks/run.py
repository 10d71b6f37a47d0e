"""``python -m benchmarks.run``: every scenario, side by side, into benchmarks/RESULTS.md.

Starts the fast upstream (0 ms and 50 ms latency, each in its own process on the last core),
checks its capacity with wrk when installed, runs the scenarios (1-14: 8 is the caching proxy, 9 DSPy, 12 pacing
without headers, 4 minutes; 13 a 1,000,000-row first pass through the accessor, about 15 minutes;
14 asyncio's loop against uvloop) (every client in a fresh
process pinned to core 0, several rounds in rotating order), prints each table as it is done
and writes ``benchmarks/RESULTS.md``. The whole run takes about 30-35 minutes on 2 cores (scenario 12 alone 5, scenario 13 about 15).

Options: ``--rounds N`` (default 5), ``--only 1,3,7`` to run some scenarios (RESULTS.md is then
written to ``--out``, by default ``benchmarks/RESULTS-partial.md``), ``--quick`` for a fast
smoke run with small sizes and one round, ``--keep`` to keep the work directory (child logs and
JSON results).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import report
from .harness import Upstream, machine, wrk_capacity
from .scenarios_batchapi import scenario_batchapi
from .scenarios_dask import scenario_dask
from .scenarios_data import scenario_cached_rerun, scenario_export, scenario_memory
from .scenarios_dspy import scenario_dspy
from .scenarios_http import (
    scenario_cache_cost,
    scenario_latency,
    scenario_pacing,
    scenario_throughput,
)
from .scenarios_pacing import scenario_adaptive
from .scenarios_proxy import scenario_proxy
from .scenarios_scale import scenario_firstpass, scenario_loops

HERE = Path(__file__).resolve().parent
FULL = {"n_throughput": 5_000, "n_latency": 2_000, "n_rerun": 100_000, "n_memory": 20_000,
        "export_sizes": (200_000, 1_000_000), "n_proxy": 5_000, "n_proxy_hits": 20_000,
        "n_dspy": 2_000, "n_dspy_rerun": 10_000,
        "batch_sizes": (200_000, 1_000_000), "n_firstpass": 1_000_000, "n_loops": 5_000}
QUICK = {"n_throughput": 1_000, "n_latency": 500, "n_rerun": 10_000, "n_memory": 2_000,
         "export_sizes": (20_000, 100_000), "n_proxy": 1_000, "n_proxy_hits": 2_000,
         "n_dspy": 500, "n_dspy_rerun": 2_000,
         "batch_sizes": (20_000, 100_000), "n_firstpass": 20_000, "n_loops": 1_000}


def log(message: str) -> None:
    print(message, flush=True)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the noisy scenarios (default 5)")
    parser.add_argument("--only", default="1,2,3,4,5,6,7,8,9,10,11,12,13,14", help="scenarios to run, e.g. 1,3")
    parser.add_argument("--quick", action="store_true", help="small sizes, one round: a smoke test")
    parser.add_argument("--out", default=None, help="where to write the Markdown report")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args(argv)


def _scenarios(only: set[str], sizes: dict, rounds: int, workdir: Path) -> list[report.Section]:
    """Run the chosen scenarios in order; each prints its table as soon as it is done."""
    sections: list[report.Section] = []
    few = max(1, min(rounds, 3))  # deterministic figures (bytes, memory) need fewer rounds
    fewer = max(1, min(rounds, 2))  # ...and the traced memory runs are slow (minima-llm: ~1 min)

    def done(section: report.Section) -> None:
        sections.append(section)
        log("\n" + section.markdown())

    with Upstream(0.0) as fast:
        if "1" in only:
            log(f"scenario 1: throughput, {sizes['n_throughput']:,} requests x {rounds} rounds")
            done(scenario_throughput(fast, workdir, rounds, sizes["n_throughput"], log))
        if "2" in only:
            with Upstream(50.0) as slow:
                log(f"scenario 2: 50 ms latency, {sizes['n_latency']:,} requests x {rounds} rounds")
                done(scenario_latency(slow, workdir, rounds, sizes["n_latency"], log))
        if "3" in only:
            log(f"scenario 3: cost of caching, {sizes['n_throughput']:,} requests x {rounds} rounds")
            done(scenario_cache_cost(fast, workdir, rounds, sizes["n_throughput"], log))
        if "4" in only:
            log(f"scenario 4: cached re-run of {sizes['n_rerun']:,} rows x {rounds} rounds")
            done(scenario_cached_rerun(fast, workdir, rounds, sizes["n_rerun"], log))
        if "5" in only:
            log(f"scenario 5: memory per result at {sizes['n_memory']:,} rows x {fewer} rounds")
            done(scenario_memory(fast, workdir, fewer, sizes["n_memory"], log))
        if "8" in only:
            log(f"scenario 8: caching proxy, {sizes['n_proxy']:,} misses and "
                f"{sizes['n_proxy_hits']:,} hits x {few} rounds (LiteLLM: 1 round, capped)")
            done(scenario_proxy(fast, workdir, few, sizes["n_proxy"], sizes["n_proxy_hits"], log))
        if "9" in only:
            with Upstream(50.0) as slow:
                log(f"scenario 9: DSPy, {sizes['n_dspy']:,} rows at 50 ms x {rounds} rounds, "
                    f"cached re-run of {sizes['n_dspy_rerun']:,} rows")
                done(scenario_dspy(slow, fast, workdir, rounds, sizes["n_dspy"], sizes["n_dspy_rerun"], log))
        if "13" in only:
            once = 1 if rounds < 3 else 2  # a round at 1,000,000 rows takes about 10 minutes
            log(f"scenario 13: first pass of {sizes['n_firstpass']:,} rows, cache on, x {once} rounds "
                "(and one traced run)")
            done(scenario_firstpass(fast, workdir, once, sizes["n_firstpass"], log))
        if "14" in only:
            log(f"scenario 14: asyncio against uvloop, {sizes['n_loops']:,} requests x {rounds} rounds")
            done(scenario_loops(fast, workdir, rounds, sizes["n_loops"], log))
    if "6" in only:
        log(f"scenario 6: Parquet export of {sizes['export_sizes'][1]:,} rows x {few} rounds")
        done(scenario_export(workdir, few, sizes["export_sizes"], log))
    if "7" in only:
        log("scenario 7: pacing, 2 runs of 20 s (in parallel)")
        done(scenario_pacing(workdir, log))
    if "10" in only:
        log(f"scenario 10: Dask, 2 worker processes x {fewer} rounds, and the global budget")
        with Upstream(50.0) as slow:
            done(scenario_dask(slow, workdir, fewer, log))
    if "11" in only:
        log(f"scenario 11: a provider batch job of {sizes['batch_sizes'][1]:,} rows x {few} rounds")
        done(scenario_batchapi(workdir, few, sizes["batch_sizes"], log))
    if "12" in only:
        log("scenario 12: pacing without headers (hidden, rising) and a lowered limit, 8 runs in parallel, 4 min")
        done(scenario_adaptive(workdir, log))
    return sections


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; print the tables; write the report. Returns the exit status."""
    args = _arguments(argv)
    rounds = 1 if args.quick else max(1, args.rounds)
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    complete = only >= {"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "12", "13", "14"} and not args.quick
    out = Path(args.out) if args.out else HERE / ("RESULTS.md" if complete else "RESULTS-partial.md")
    sizes = QUICK if args.quick else FULL
    started = time.monotonic()
    info = machine()
    log(f"minima_nb benchmarks on {info['cpu']} ({info['cores']} cores), Python {info['python']}, "
        f"{info['pinning']}")
    workdir = Path(tempfile.mkdtemp(prefix="minima-bench-"))
    try:
        with Upstream(0.0) as probe:
            capacity = wrk_capacity(probe.url, workdir)
        log(f"upstream capacity: {capacity['req_s']:,.0f} req/s (wrk)" if capacity and capacity.get("req_s")
            else "wrk unavailable: upstream capacity shown by its CPU share instead")
        sections = _scenarios(only, sizes, rounds, workdir)
    finally:
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    command = "make bench" if complete else "python -m benchmarks.run " + " ".join(argv or sys.argv[1:])
    text = report.document(info, command, rounds, time.monotonic() - started, capacity, sections)
    out.write_text(text, encoding="utf-8")
    log(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
