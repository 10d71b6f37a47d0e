"""The shared workload and the measuring helpers every benchmark child process uses.

A child is started as ``python -m benchmarks.<module> '<json spec>'``; it builds its inputs,
imports what it measures, times only the measured part with ``time.perf_counter`` (wall) and
``time.process_time`` (CPU of every thread of the process), and writes one JSON object to the
file named by ``spec["out"]``. Peers may print to stdout, so results never go there.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

MODEL = "mock-model"
API_KEY = "sk-bench-not-a-real-key"


def prompts(count: int, offset: int = 0) -> list[str]:
    """``count`` distinct prompts of about 60 characters."""
    return [f"Question {i}: what is {i} plus {i}? Answer with one number." for i in
            range(offset, offset + count)]


def messages_of(prompt: str) -> list[dict[str, str]]:
    """The chat message list a single-prompt request sends."""
    return [{"role": "user", "content": prompt}]


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Timer:
    """Wall and process-CPU time of a block: ``with Timer() as t: ...; t.wall_s, t.cpu_s``.

    Also the kernel part of that CPU (``sys_s``), the context switches (``switches``), which
    show the cost of threads handing work to each other, and the wall-clock start and end
    (``start_epoch``, ``end_epoch``) so the parent can read the upstream's CPU over that window.
    """

    def __enter__(self) -> Timer:
        self.wall_s = self.cpu_s = self.sys_s = 0.0
        self.switches = 0
        self._usage0 = resource.getrusage(resource.RUSAGE_SELF)
        self.start_epoch = time.time()
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._wall0
        self.cpu_s = time.process_time() - self._cpu0
        self.end_epoch = time.time()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.sys_s = usage.ru_stime - self._usage0.ru_stime
        self.switches = (usage.ru_nvcsw + usage.ru_nivcsw) - (self._usage0.ru_nvcsw + self._usage0.ru_nivcsw)


def child_main(measure: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Run ``measure(spec)`` with the spec from argv and write its JSON result to ``spec["out"]``."""
    spec = json.loads(sys.argv[1])
    result = measure(spec)
    with open(spec["out"], "w", encoding="utf-8") as f:
        json.dump(result, f)
