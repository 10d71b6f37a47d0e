"""The main job (`make demo`) really runs: two passes, the second entirely from the cache."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_demo_runs_two_passes_and_the_second_sends_nothing(tmp_path):
    """The demo exits 0, answers every row, and its cached pass sends zero requests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CACHE_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "minima_nb.cli.demo", "--rows", "120", "--latency-ms", "5",
         "--cache-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    first = re.search(r"pass 1: .* 120 rows, (\d+) requests sent, 0 cached, 0 failed", out)
    second = re.search(r"pass 2: .* 120 rows, 0 requests sent, 120 cached", out)
    assert first and second, out
    assert 0 < int(first.group(1)) < 120  # repeated prompts are sent once
    assert "minima: done 120/120" in out
    assert (tmp_path / "minima_llm.db").exists()
