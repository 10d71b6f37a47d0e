"""Scenario 5: memory a batch's results keep alive, per row, minima_nb against minima-llm 0.2.8.

One child process per client, mode and round. A warm-up batch of a few requests first loads
what the client imports lazily, so one-off imports are not charged to the rows.

``mode="trace"``: ``tracemalloc`` traces every Python allocation from just before the measured
batch; after it, with the results still held and garbage collected:

* ``retained``: traced memory still allocated over the pre-batch baseline (everything the run
  left behind: the results, and whatever the client keeps besides);
* ``held_by_results``: how much of that goes away when the results list is dropped;
* ``texts``: the size of the answer strings themselves.

"Per row beyond the texts" is ``(retained - texts) / rows``.

``mode="rss"`` (no tracing, which would inflate the RSS): resident memory after the batch with
the results held, and the peak during it, each over the RSS before the batch.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc
from typing import Any

from .clients import _IMPORTS, RUNNERS, prepare_environment, texts
from .workload import Timer, child_main, peak_rss_bytes, prompts, rss_bytes

WARM_UP = 64


def _traced(run: Any) -> dict[str, Any]:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    results = run()
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0]
    answers = texts(results)
    ok = sum(a is not None for a in answers)
    text_bytes = sum(sys.getsizeof(a) for a in answers if a is not None)
    del answers, results
    gc.collect()
    after_drop = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    rows = max(1, ok)
    return {"ok": ok, "retained": kept - base, "held_by_results": kept - after_drop,
            "texts": text_bytes, "per_row_beyond_texts": (kept - base - text_bytes) / rows,
            "results_per_row_beyond_texts": (kept - after_drop - text_bytes) / rows}


def _resident(run: Any) -> dict[str, Any]:
    rss0 = rss_bytes()
    results = run()
    gc.collect()
    ok = sum(a is not None for a in texts(results))
    rows = max(1, ok)
    rss_after, peak = rss_bytes() - rss0, peak_rss_bytes() - rss0
    return {"ok": ok, "rss_after": rss_after, "rss_per_row": rss_after / rows,
            "peak_rss_over": peak, "peak_rss_per_row": peak / rows}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One run of ``spec["client"]`` over ``spec["n"]`` prompts, traced or by RSS (``spec["mode"]``)."""
    client, url, concurrency = spec["client"], spec["url"], spec.get("concurrency", 64)
    prepare_environment(client, url, concurrency)
    __import__(_IMPORTS[client])
    items = prompts(spec["n"])
    runner = RUNNERS[client]
    asyncio.run(runner(url, prompts(WARM_UP, offset=len(items)), concurrency))
    gc.collect()

    def run() -> list[Any]:
        return asyncio.run(runner(url, items, concurrency))

    with Timer() as t:
        figures = _traced(run) if spec.get("mode", "trace") == "trace" else _resident(run)
    return {"client": client, "n": len(items), "mode": spec.get("mode", "trace"),
            "wall_s": t.wall_s, **figures}


if __name__ == "__main__":
    child_main(measure)
