"""The child side of scenarios 13 (a 1,000,000-row first pass) and 14 (the event loops).

Run as ``python -m benchmarks.scale '<json spec>'`` (see ``workload.child_main``); one run of one
client per process, imports and a warm-up batch of 64 requests outside the timed part.

``spec["task"] == "firstpass"`` (scenario 13), ``spec["client"]``:

* ``"aiohttp"``: the raw aiohttp floor of :mod:`.clients` over the same prompts (no cache);
* ``"generate"``: ``df.minima.generate("prompt")`` over a DataFrame of ``n`` distinct prompts
  with the cache on (a fresh directory: every row a miss, every answer stored), ``progress``
  off, or on through the real notebook sink (:class:`NotebookSink`) with a tqdm bar that counts
  its redraws (written to /dev/null). ``trace=True`` measures the memory the call leaves
  behind instead, with tracemalloc (as :mod:`.memory` does) plus Arrow's own allocations, the
  texts taken out.

``spec["task"] == "loops"`` (scenario 14): ``"aiohttp"`` on ``asyncio.run`` or ``uvloop.run``,
``"minima_nb"`` (``run_batched``, cache off, as scenario 1, on the default transport: http1) and
``"minima_nb-aiohttp"`` (the same with ``transport="aiohttp"``), called from sync code, so they
run on the private loop thread, whose loop ``MINIMA_UVLOOP`` picks (set here before the engine loads).
"""

from __future__ import annotations

import asyncio
import gc
import os
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

from . import netguard
from .clients import run_aiohttp, run_minima_nb, texts
from .workload import API_KEY, MODEL, Timer, child_main, peak_rss_bytes, prompts

WARM_UP = 64
CONCURRENCY = 64


def _counting_sink() -> tuple[Any, dict[str, int]]:
    """The notebook layer's real sink with a tqdm bar that counts its redraws; (sink, counts)."""
    from tqdm.std import tqdm

    from minima_nb.notebook.progress import NotebookSink

    counts = {"draw_calls": 0, "redraws": 0}
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the child process

    class CountingBar(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, file=devnull, **kwargs)

        def refresh(self, *args: Any, **kwargs: Any) -> Any:
            counts["redraws"] += 1
            return super().refresh(*args, **kwargs)

    class CountingSink(NotebookSink):
        def draw(self) -> None:
            counts["draw_calls"] += 1
            super().draw()

    return CountingSink(label="minima", tqdm_cls=CountingBar), counts


def _backend(url: str, cache_dir: str | None) -> Any:
    from minima_nb import BatchConfig, MinimaLlmConfig, OpenAIMinimaLlm

    return OpenAIMinimaLlm(MinimaLlmConfig(
        base_url=url, model=MODEL, api_key=API_KEY, cache_dir=cache_dir, rpm=0,
        max_outstanding=CONCURRENCY, batch=BatchConfig(num_workers=CONCURRENCY)))


def _generate(url: str, items: list[str], cache_dir: str, progress: bool) -> tuple[Any, dict[str, int]]:
    """``df.minima.generate`` over ``items`` with a cache in ``cache_dir``; (the Series, redraw counts)."""
    import pandas as pd

    from minima_nb.engine.sync import run_sync

    frame = pd.DataFrame({"prompt": items})
    backend = _backend(url, cache_dir)
    sink, counts = _counting_sink() if progress else (False, {})
    try:
        answers = frame.minima.generate("prompt", backend=backend, progress=sink)
    finally:
        run_sync(backend.aclose())
        backend.close()
    return answers, counts


def _firstpass(spec: dict[str, Any]) -> dict[str, Any]:
    url, n, client = spec["url"], spec["n"], spec["client"]
    items = prompts(n)
    warm = prompts(WARM_UP, offset=n + 1_000_000)
    work = Path(spec.get("dir") or tempfile.mkdtemp(prefix="minima-firstpass-"))
    if client == "aiohttp":
        asyncio.run(run_aiohttp(url, warm, CONCURRENCY))
        with Timer() as t:
            answers = texts(asyncio.run(run_aiohttp(url, items, CONCURRENCY)))
        return {"ok": sum(a is not None for a in answers), "wall_s": t.wall_s, "cpu_s": t.cpu_s,
                "peak_rss": peak_rss_bytes()}
    import minima_nb  # noqa: F401  - the accessor, imported outside the timed part

    _generate(url, warm, str(work / "warm-up"), bool(spec.get("progress")))
    gc.collect()
    if spec.get("trace"):
        return _traced_generate(url, items, str(work / "cache"))
    with Timer() as t:
        series, counts = _generate(url, items, str(work / "cache"), bool(spec.get("progress")))
    ok = int(series.notna().sum())
    return {"ok": ok, "wall_s": t.wall_s, "cpu_s": t.cpu_s, "peak_rss": peak_rss_bytes(), **counts}


def _traced_generate(url: str, items: list[str], cache_dir: str) -> dict[str, Any]:
    """Memory the call leaves behind (its Series held, after a collection), the texts taken out.

    Python allocations are traced by tracemalloc; the Series keeps its strings in Arrow buffers,
    which Arrow allocates itself (untraced), so Arrow's own count is added. The texts are their
    UTF-8 bytes: what remains per row beyond them is the real overhead (offsets, index, engine).
    """
    import pyarrow as pa

    tracemalloc.start()
    base, arrow_base = tracemalloc.get_traced_memory()[0], pa.total_allocated_bytes()
    with Timer() as t:
        series, _ = _generate(url, items, cache_dir, False)
    gc.collect()
    kept, peak = tracemalloc.get_traced_memory()
    arrow_kept = pa.total_allocated_bytes() - arrow_base
    answers = [a for a in series.tolist() if isinstance(a, str)]
    text_bytes = sum(len(a.encode()) for a in answers)
    ok = len(answers)
    del answers, series
    gc.collect()
    after_drop = tracemalloc.get_traced_memory()[0] + pa.total_allocated_bytes() - arrow_base
    tracemalloc.stop()
    rows = max(1, ok)
    retained = kept - base + arrow_kept
    return {"ok": ok, "wall_s": t.wall_s, "retained": retained, "arrow": arrow_kept,
            "held_by_results": kept - base + arrow_kept - (after_drop - base), "texts": text_bytes,
            "traced_peak": peak - base, "per_row_beyond_texts": (retained - text_bytes) / rows,
            "peak_per_row": (peak - base) / rows}


def _loops(spec: dict[str, Any]) -> dict[str, Any]:
    """One client on one loop over ``n`` distinct requests (scenario 14)."""
    url, n, client, loop = spec["url"], spec["n"], spec["client"], spec["loop"]
    os.environ["MINIMA_UVLOOP"] = "1" if loop == "uvloop" else "0"
    items, warm = prompts(n), prompts(WARM_UP, offset=n + 1_000_000)
    if client == "aiohttp":
        import uvloop

        run = uvloop.run if loop == "uvloop" else asyncio.run
        run(run_aiohttp(url, warm, CONCURRENCY))
        with Timer() as t:
            results = run(run_aiohttp(url, items, CONCURRENCY))
        kind = loop
    else:
        import minima_nb  # noqa: F401
        from minima_nb.engine.loop import background_loop_kind
        from minima_nb.engine.sync import run_sync

        transport = "aiohttp" if client == "minima_nb-aiohttp" else "auto"
        run_sync(run_minima_nb(url, warm, CONCURRENCY, transport=transport))
        with Timer() as t:
            results = run_sync(run_minima_nb(url, items, CONCURRENCY, transport=transport))
        kind = background_loop_kind()
    answers = texts(results)
    return {"ok": sum(a is not None for a in answers), "wall_s": t.wall_s, "cpu_s": t.cpu_s,
            "loop_ran": kind}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One timed run described by ``spec`` (see the module docstring)."""
    netguard.install()
    result = _firstpass(spec) if spec["task"] == "firstpass" else _loops(spec)
    return {**result, "n": spec["n"], "blocked_network": list(netguard.blocked)}


if __name__ == "__main__":
    child_main(measure)
