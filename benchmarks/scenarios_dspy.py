"""Scenario 9: DSPy programs over many rows, ``df.minima.predict`` against DSPy's own route.

Part one (50 ms upstream): ``n`` rows of a two-output-field ``dspy.Predict`` through
``df.minima.predict`` (fresh cache, ``max_outstanding=64``) and through DSPy's own route,
``dspy.LM("openai/mock-model", api_base=..., cache=False)`` with ``program.batch(examples,
num_threads=64)``, alternating in order, one fresh process each (``benchmarks.dspybench``). Part
two (0 ms upstream): a fully cached re-run of ``n_rerun`` rows, ``df.minima.predict`` beside
``df.minima.generate`` on the same questions, which isolates DSPy's formatting and parsing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .harness import Upstream, run_child
from .report import Section, Target, count, median, micro, ratio, spread

CONCURRENCY = 64
NAMES = {"predict": "**minima_nb** `df.minima.predict(dspy.Predict(Sig))`",
         "dspy": "DSPy's route: `dspy.LM(\"openai/...\", api_base=..., cache=False)` + `program.batch(num_threads=64)`"}


def _fmt(value: float | None, fmt: Any) -> str:
    return "n/a" if value is None else fmt(value)


def _round(upstream: Upstream, workdir: Path, n: int, r: int, log: Any) -> dict[str, dict]:
    results = {}
    for task in (("predict", "dspy") if r % 2 == 0 else ("dspy", "predict")):
        cache_dir = workdir / f"dspy-{task}-{r}"
        spec = {"task": task, "url": upstream.url, "n": n, "concurrency": CONCURRENCY, "cache_dir": str(cache_dir)}
        result = run_child("benchmarks.dspybench", spec, workdir)
        for leftover in (cache_dir, f"{cache_dir}-warm-up", f"{cache_dir}-dspy"):
            shutil.rmtree(leftover, ignore_errors=True)
        if "error" not in result and result["ok"] == n:
            result.update(rows_s=n / result["wall_s"], cpu_us=result["cpu_s"] / n * 1e6,
                          upstream_cpu=upstream.cpu_share(result))
        else:
            result.setdefault("error", f"only {result.get('ok')} of {n} rows answered")
        results[task] = result
        log(f"  round {r + 1} {task:8s} " + (f"{result['rows_s']:7,.0f} rows/s {result['cpu_us']:7,.0f} µs/row"
                                             if "rows_s" in result else f"FAILED {result['error'][:300]}"))
    return results


def _rerun(upstream: Upstream, workdir: Path, n: int, r: int, log: Any) -> dict[str, Any]:
    cache_dir = workdir / f"dspy-rerun-{r}"
    spec = {"task": "rerun", "url": upstream.url, "n": n, "concurrency": CONCURRENCY,
            "cache_dir": str(cache_dir), "generate_first": r % 2 == 1}
    result = run_child("benchmarks.dspybench", spec, workdir)
    shutil.rmtree(cache_dir, ignore_errors=True)
    if "error" in result:
        log(f"  re-run round {r + 1} FAILED {result['error'][:300]}")
        return result
    for name in ("predict", "generate"):
        result[name]["rows_s"] = n / result[name]["wall_s"]
    log(f"  re-run round {r + 1}: predict {result['predict']['rows_s']:,.0f} rows/s, "
        f"generate {result['generate']['rows_s']:,.0f} rows/s")
    return result


def scenario_dspy(slow: Upstream, fast: Upstream, workdir: Path, rounds: int, n: int, n_rerun: int,
                  log: Any) -> Section:
    """Scenario 9: ``n`` live rows at 50 ms (two routes), then a cached re-run of ``n_rerun`` rows."""
    per_round = [_round(slow, workdir, n, r, log) for r in range(rounds)]
    reruns = [_rerun(fast, workdir, n_rerun, r, log) for r in range(max(1, min(rounds, 3)))]
    ok_reruns = [r for r in reruns if "error" not in r]

    def column(task: str, name: str) -> list[float | None]:
        return [r[task].get(name) for r in per_round]

    speedups = [r["predict"].get("rows_s", 0) / r["dspy"]["rows_s"] if r["dspy"].get("rows_s") and
                r["predict"].get("rows_s") else None for r in per_round]
    cpu_shares = [r["predict"]["cpu_us"] / r["dspy"]["cpu_us"] if r["dspy"].get("cpu_us") and
                  r["predict"].get("cpu_us") else None for r in per_round]
    rows = [[NAMES[task], spread(column(task, "rows_s"), count), spread(column(task, "cpu_us"), micro),
             "–" if task == "predict" else spread(speedups, ratio),
             spread([v * 100 if v is not None else None for v in column(task, "upstream_cpu")],
                    lambda v: f"{v:.1f} %")] for task in ("predict", "dspy")]
    rows += [[f"cached re-run of {n_rerun:,} rows: `df.minima.predict` (every LM call a cache hit)",
              spread([r["predict"]["rows_s"] for r in ok_reruns], count),
              spread([r["predict"]["cpu_s"] / n_rerun * 1e6 for r in ok_reruns], micro), "", ""],
             [f"cached re-run of the same {n_rerun:,} questions as plain prompts: `df.minima.generate`",
              spread([r["generate"]["rows_s"] for r in ok_reruns], count),
              spread([r["generate"]["cpu_s"] / n_rerun * 1e6 for r in ok_reruns], micro), "", ""]]
    blocked = sorted({h for r in per_round for res in r.values() for h in res.get("blocked_network", [])})
    failures = [f"round {i + 1}, {task}: {res['error'][:400]}" for i, r in enumerate(per_round)
                for task, res in r.items() if "error" in res]
    failures += [f"re-run: {r['error'][:400]}" for r in reruns if "error" in r]
    speedup, cpu_share = median(speedups), median(cpu_shares)
    section = Section(
        f"9. DSPy over a DataFrame: {n:,} rows at 50 ms, and a cached re-run of {n_rerun:,}",
        f"A `dspy.Predict` of a signature with one input and two output fields (`question -> answer: "
        f"str, confidence: float`), {n:,} distinct rows against the 50 ms upstream (which answers "
        "DSPy's chat format), after an untimed warm-up of 64 other rows in the same process. "
        "minima_nb: `df.minima.predict(program, backend=..., progress=False)` with `rpm=0, "
        "max_outstanding=64, num_workers=64` and a fresh cache directory (every answer stored). "
        "DSPy: its own lm15 HTTP route with its cache off, `program.batch(examples, num_threads=64)`. "
        "Client CPU is the whole process (every thread). The re-run rows: a cache filled untimed by "
        "a first pass, then both calls timed in one process over the 0 ms upstream.",
        ["route", "rows/s", "client CPU per row", "minima_nb's rows/s ÷ this", "upstream CPU"], rows,
        ["df.minima.predict sends a plain Predict or ChainOfThought straight through `backend.run_batched` "
         "(one batch: bulk cache reads, 64 in flight), formatting and parsing each row with the "
         "adapter as DSPy does; a custom Module takes the LM route (`program.acall` per row).",
         "The cached re-run's difference between `predict` and `generate` is DSPy's formatting "
         "(the user message per row) and parsing (the tolerant parser per answer), and the typed columns.",
         "Connections anywhere but 127.0.0.1 are refused in every child (benchmarks/netguard.py); "
         "attempts refused: " + (", ".join(blocked) if blocked else "none") + ".", *failures])
    section.targets = [
        Target("9", "df.minima.predict rows/s ≥ 3× DSPy's own route (program.batch, 64 threads)",
               _fmt(speedup, ratio), None if speedup is None else speedup >= 3.0),
        Target("9", "df.minima.predict client CPU per row ≤ ½ of DSPy's route",
               _fmt(cpu_share, ratio), None if cpu_share is None else cpu_share <= 0.5),
    ]
    return section
