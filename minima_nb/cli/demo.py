"""The main job behind ``make demo``: the notebook experience, from a terminal, with no API key.

It starts the embedded mock server on 127.0.0.1, builds a DataFrame of a few hundred prompts,
runs ``df.minima.generate`` with the text progress display, runs it again (every answer now
comes from the SQLite cache), and prints a small table of answers and the timing of both passes.
Every request is real HTTP to the mock server; nothing is printed from a script.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import pandas as pd

import minima_nb
from minima_nb.config import setting_from_env
from minima_nb.notebook import session
from minima_nb.testing import MockServer

QUESTIONS = (
    "What is 2+2?",
    "Capital of France?",
    "Name a prime number greater than {n}.",
    "Summarise item {n} of the reading list in one sentence.",
    "Is {n} even or odd?",
    "Translate 'row {n}' into French.",
)


def build_frame(rows: int) -> pd.DataFrame:
    """A frame of ``rows`` prompts, a few of them repeated (repeats are sent once)."""
    prompts = [QUESTIONS[i % len(QUESTIONS)].format(n=i) for i in range(rows)]
    return pd.DataFrame({"topic": [f"t{i % 7}" for i in range(rows)], "prompt": prompts})


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m minima_nb.cli.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400, help="prompts in the DataFrame (default 400)")
    parser.add_argument("--latency-ms", type=float, default=250.0,
                        help="mock server latency per answer (default 250, like a real API)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--cache-dir", default=None, help="cache directory (default: a new temporary one)")
    return parser.parse_args(argv)


def _timed_generate(df: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    started = time.perf_counter()
    details = df.minima.generate("prompt", details=True, progress="text")
    return details, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the process exit code."""
    args = _parse_args(argv)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="minima-nb-demo-")
    with MockServer(latency_s=args.latency_ms / 1000.0) as server:
        backend = minima_nb.configure(
            base_url=server.base_url,
            model="mock-model",
            api_key=setting_from_env("api_key"),
            cache_dir=cache_dir,
            rpm=0,
            max_outstanding=args.concurrency,
            batch={"heartbeat_s": 1.0, "num_workers": args.concurrency},
        )
        df = build_frame(args.rows)
        out = sys.stdout
        out.write(f"minima_nb {minima_nb.__version__} demo: {len(df)} prompts -> mock server at {server.base_url}\n")
        cache = backend.cache
        if cache is None:  # cache_dir is always set above, so configure() made a cache
            raise RuntimeError("the demo backend has no prompt cache")
        out.write(f"cache: {cache.path}\n\n")
        out.write("pass 1 (answers from the server):\n")
        out.flush()
        first, t_first = _timed_generate(df)
        sent_first = server.requests_total
        out.write("\npass 2 (same prompts, answers from the cache):\n")
        out.flush()
        second, t_second = _timed_generate(df)
        sent_second = server.requests_total - sent_first
    table = df.assign(answer=second["text"], cached=second["cached"]).head(8)
    for column in ("prompt", "answer"):
        table[column] = table[column].str.slice(0, 38)
    out.write("\n" + table.to_string() + "\n\n")
    out.write(
        f"pass 1: {t_first:6.2f}s  {len(df)} rows, {sent_first} requests sent, "
        f"{int(first['cached'].sum())} cached, {int(first['error'].notna().sum())} failed\n"
        f"pass 2: {t_second:6.2f}s  {len(df)} rows, {sent_second} requests sent, "
        f"{int(second['cached'].sum())} cached  ({t_first / max(t_second, 1e-9):,.0f}x faster)\n"
    )
    session.reset()
    return 0 if second["text"].equals(first["text"]) and sent_second == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
