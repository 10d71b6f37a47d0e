"""Scenario 10: scale-out on Dask (``minima_nb.dask``) on this machine.

Throughput: the same 50 ms-latency upstream and the same total concurrency (32 requests in
flight), once from one process (``df.minima.generate``) and once from a ``LocalCluster`` of 2
worker processes (16 each, ``ddf.minima.generate``), on a warm cluster (its start and a first small compute are not timed).
Budget: the embedded mock enforcing 1200 rpm (over a 4 s window), ``rpm=1200`` as the global
budget, even and skewed (one partition 4× the others) partitions: share of the budget used
between the first and the last request the server saw, and the 429 count.

Runs in the benchmark's own process (the cluster's workers are processes of their own).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .report import Section, Target, percent

N_THROUGHPUT = 2_000
BUDGET_RPM = 1_200
KEY = "sk-bench-dask"
KEY_ENV = "MINIMA_BENCH_DASK_KEY"


class _Arrivals:
    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self) -> float:
        now = time.monotonic()
        self.times.append(now)
        return now


def _config(url: str, cache: Path | None, outstanding: int, rpm: int) -> Any:
    from minima_nb import MinimaLlmConfig

    return MinimaLlmConfig(base_url=url, model="mock-model", api_key=KEY, rpm=rpm,
                           cache_dir=str(cache) if cache else None, max_outstanding=outstanding)


def _throughput(url: str, workdir: Path, rounds: int, client: Any,
                log: Callable[[str], None]) -> tuple[list[float], list[float]]:
    import dask.dataframe as dd
    import pandas as pd

    from minima_nb import OpenAIMinimaLlm

    single, cluster = [], []
    # Warm-up: the first compute registers the worker plugin and builds each worker's engine.
    warm = OpenAIMinimaLlm(_config(url, None, 16, 0))
    warm_df = pd.DataFrame({"prompt": [f"dask warm-up {i}" for i in range(64)]})
    dd.from_pandas(warm_df, npartitions=4).minima.generate(
        "prompt", backend=warm, key_env=KEY_ENV, progress=False).compute()
    warm.close()
    for r in range(rounds):
        df = pd.DataFrame({"prompt": [f"dask bench {r} {i}" for i in range(N_THROUGHPUT)]})
        one = OpenAIMinimaLlm(_config(url, None, 32, 0))
        started = time.perf_counter()
        df.minima.generate("prompt", backend=one, progress=False)
        single.append(N_THROUGHPUT / (time.perf_counter() - started))
        one.close()
        two = OpenAIMinimaLlm(_config(url, None, 16, 0))
        ddf = dd.from_pandas(df.assign(prompt=df["prompt"] + " c"), npartitions=8)
        started = time.perf_counter()
        ddf.minima.generate("prompt", backend=two, key_env=KEY_ENV, progress=False).compute()
        cluster.append(N_THROUGHPUT / (time.perf_counter() - started))
        two.close()
        log(f"  round {r + 1}: one process {single[-1]:,.0f} req/s, 2 workers {cluster[-1]:,.0f} req/s")
    return single, cluster


def _budget(sizes: list[int], workdir: Path, name: str) -> dict[str, float]:
    import dask
    import dask.dataframe as dd
    import pandas as pd

    from minima_nb import OpenAIMinimaLlm
    from minima_nb.testing import MockServer

    arrivals = _Arrivals()
    with MockServer(rate_limit=BUDGET_RPM, rate_window_s=4.0, latency_s=0.05, clock=arrivals) as srv:
        backend = OpenAIMinimaLlm(_config(srv.base_url, workdir / f"budget-{name}", 32, BUDGET_RPM))
        parts = [pd.DataFrame({"prompt": [f"budget {name} {p} {i}" for i in range(n)]})
                 for p, n in enumerate(sizes)]
        ddf = dd.from_delayed([dask.delayed(p) for p in parts], meta=parts[0].iloc[:0], verify_meta=False)
        started = time.monotonic()
        ddf.minima.generate("prompt", backend=backend, key_env=KEY_ENV, rpm=BUDGET_RPM,
                            progress=False).compute()
        wall = time.monotonic() - started
        backend.close()
        statuses = srv.responses_by_status
    span = arrivals.times[-1] - arrivals.times[0]
    return {"rows": sum(sizes), "used": (len(arrivals.times) - 1) / span * 60 / BUDGET_RPM,
            "used_wall": sum(sizes) / wall * 60 / BUDGET_RPM, "429": statuses.get(429, 0)}


def scenario_dask(slow: Any, workdir: Path, rounds: int, log: Callable[[str], None]) -> Section:
    """Scenario 10: Dask's 2 worker processes against one process; the global budget."""
    from distributed import Client, LocalCluster

    import minima_nb.dask  # noqa: F401  (registers ddf.minima)

    os.environ[KEY_ENV] = KEY
    try:
        with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            single, two = _throughput(slow.url, workdir, rounds, client, log)
            even = _budget([20] * 10, workdir, "even")
            skewed = _budget([80, 20, 20, 20, 20, 20, 20], workdir, "skewed")
    finally:
        os.environ.pop(KEY_ENV, None)
    ratios = [c / s for s, c in zip(single, two, strict=True)]
    share = statistics.median(ratios)
    section = Section(
        "10. Scale-out on Dask: 2 worker processes, one global budget",
        __doc__.split("\n\n", 1)[1].strip().replace("\n", " "),
        ["run", "req/s or share of budget", "429s"],
    )
    section.rows = [
        [f"one process, 32 in flight ({N_THROUGHPUT:,} prompts, 50 ms)",
         f"{statistics.median(single):,.0f} req/s ({min(single):,.0f}–{max(single):,.0f})", "–"],
        ["LocalCluster 2 workers × 16 in flight",
         f"{statistics.median(two):,.0f} req/s ({min(two):,.0f}–{max(two):,.0f})", "–"],
        ["cluster / one process", percent(share), "–"],
        [f"budget {BUDGET_RPM} rpm, even (10 × 20 rows)",
         f"{percent(even['used'])} (whole compute: {percent(even['used_wall'])})", f"{even['429']:.0f}"],
        [f"budget {BUDGET_RPM} rpm, skewed (80 + 6 × 20 rows)",
         f"{percent(skewed['used'])} (whole compute: {percent(skewed['used_wall'])})", f"{skewed['429']:.0f}"],
    ]
    section.notes = [
        "The share of the budget is counted between the first and the last request the server saw; "
        "'whole compute' also charges the graph's submission and the last partition's return.",
        "Budget starts are planned at 97 % of rpm (headroom against arrival jitter on a sliding window).",
        "On 2 cores Dask does not add throughput: it earns its keep when the data already lives in a "
        "cluster of several machines.",
    ]
    section.targets = [
        Target("10", "2 Dask workers ≥ 90 % of one process's throughput (50 ms, same concurrency)",
               percent(share), share >= 0.90),
        Target("10", "global budget: ≥ 95 % used and 0 × 429, even partitions",
               f"{percent(even['used'])}, {even['429']:.0f} × 429", even["used"] >= 0.95 and even["429"] == 0),
        Target("10", "global budget: ≥ 95 % used and 0 × 429, skewed partitions",
               f"{percent(skewed['used'])}, {skewed['429']:.0f} × 429",
               skewed["used"] >= 0.95 and skewed["429"] == 0),
    ]
    return section
