"""Child process of scenario 9: a DSPy program over many rows, one way, timed.

Tasks (``spec["task"]``):

* ``predict``: ``df.minima.predict(dspy.Predict(TwoField))`` over ``n`` rows (fresh cache,
  ``rpm=0``, ``max_outstanding`` = the concurrency);
* ``dspy``: DSPy's own route, ``dspy.LM("openai/mock-model", api_base=url, cache=False)`` and
  ``program.batch(examples, num_threads=concurrency)``;
* ``rerun``: a fully cached re-run of ``n`` rows, ``df.minima.predict`` beside
  ``df.minima.generate`` on the same questions (both caches filled untimed first).

Each does an untimed warm-up of 64 other rows first (imports, first connections, first cache).
Network access beyond 127.0.0.1 is refused (:mod:`benchmarks.netguard`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from . import netguard
from .workload import API_KEY, MODEL, Timer, child_main, peak_rss_bytes, prompts

WARM_UP = 64


def _signature() -> Any:
    import dspy

    class TwoField(dspy.Signature):
        """Answer the question and say how sure you are."""

        question: str = dspy.InputField()
        answer: str = dspy.OutputField()
        confidence: float = dspy.OutputField(desc="0 to 5")

    return TwoField


def _frame(n: int, offset: int = 0) -> Any:
    import pandas as pd

    return pd.DataFrame({"question": prompts(n, offset)})


def _backend(url: str, cache_dir: str, concurrency: int) -> Any:
    from minima_nb import BatchConfig, MinimaLlmConfig, OpenAIMinimaLlm

    return OpenAIMinimaLlm(MinimaLlmConfig(
        base_url=url, model=MODEL, api_key=API_KEY, cache_dir=cache_dir, rpm=0,
        max_outstanding=concurrency, batch=BatchConfig(num_workers=concurrency)))


def _predict(spec: dict[str, Any]) -> dict[str, Any]:
    import dspy

    import minima_nb  # noqa: F401  (df.minima)

    program = dspy.Predict(_signature())
    warm = _backend(spec["url"], spec["cache_dir"] + "-warm-up", spec["concurrency"])
    _frame(WARM_UP, 1_000_000).minima.predict(program, backend=warm, progress=False)
    backend = _backend(spec["url"], spec["cache_dir"], spec["concurrency"])
    df = _frame(spec["n"])
    with Timer() as t:
        out = df.minima.predict(program, backend=backend, progress=False)
    return {"ok": int(out["confidence"].notna().sum()), "wall_s": t.wall_s, "cpu_s": t.cpu_s,
            "window": [t.start_epoch, t.end_epoch]}


def _dspy(spec: dict[str, Any]) -> dict[str, Any]:
    import dspy

    lm = dspy.LM(f"openai/{MODEL}", api_base=spec["url"], api_key=API_KEY, cache=False)
    dspy.configure(lm=lm)
    program = dspy.Predict(_signature())

    def examples(n: int, offset: int = 0) -> list[Any]:
        return [dspy.Example(question=q).with_inputs("question") for q in prompts(n, offset)]

    program.batch(examples(WARM_UP, 1_000_000), num_threads=spec["concurrency"], disable_progress_bar=True)
    items = examples(spec["n"])
    with Timer() as t:
        out = program.batch(items, num_threads=spec["concurrency"], disable_progress_bar=True,
                            max_errors=len(items))
    ok = sum(getattr(p, "confidence", None) is not None for p in out)
    return {"ok": ok, "wall_s": t.wall_s, "cpu_s": t.cpu_s, "window": [t.start_epoch, t.end_epoch]}


def _rerun(spec: dict[str, Any]) -> dict[str, Any]:
    import dspy

    import minima_nb  # noqa: F401

    program = dspy.Predict(_signature())
    backend = _backend(spec["url"], spec["cache_dir"], spec["concurrency"])
    df = _frame(spec["n"])
    df.minima.predict(program, backend=backend, progress=False)  # fill the caches, untimed
    df.minima.generate("question", backend=backend, progress=False)
    results = {}
    order = ("generate", "predict") if spec.get("generate_first") else ("predict", "generate")
    for name in order:
        with Timer() as t:
            if name == "predict":
                out = df.minima.predict(program, backend=backend, progress=False, details=True)
                ok = int(out["cached"].sum())
            else:
                out = df.minima.generate("question", backend=backend, progress=False, details=True)
                ok = int(out["cached"].sum())
        results[name] = {"ok": ok, "wall_s": t.wall_s, "cpu_s": t.cpu_s}
    return results


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One timed run of ``spec["task"]``."""
    netguard.install()
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # litellm's cost map from its package
    os.environ["DSPY_CACHEDIR"] = spec["cache_dir"] + "-dspy"  # in case anything opens it
    task = {"predict": _predict, "dspy": _dspy, "rerun": _rerun}[spec["task"]]
    result = task(spec)
    result.update(task=spec["task"], n=spec["n"], peak_rss=peak_rss_bytes(),
                  blocked_network=list(netguard.blocked), python=sys.version.split()[0])
    return result


if __name__ == "__main__":
    child_main(measure)
