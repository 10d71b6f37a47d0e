"""The parent side of the benchmarks: upstream processes, child runs, CPU pinning, the machine.

* :class:`Upstream` starts ``benchmarks.upstream`` in its own process, pinned to the last core,
  and samples its CPU time in the background so the CPU it used during any client's timed
  window can be read afterwards (:meth:`Upstream.cpu_share`).
* :func:`run_child` runs one measurement in a fresh interpreter pinned to core 0 and returns
  the JSON it wrote (or an ``{"error": ...}`` with the tail of its log).
* :func:`wrk_capacity` measures an upstream's capacity with ``wrk`` when it is installed.
* :func:`machine` describes the machine and the versions of everything measured.
"""

from __future__ import annotations

import bisect
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

PACKAGES = ("minima-nb", "aiohttp", "openai", "litellm", "minima-llm", "dspy", "httpx", "httptools",
            "pandas", "pyarrow", "tqdm", "ipywidgets", "PyYAML", "psutil")
CHILD_TIMEOUT_S = 900


def cores() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def pinned(command: list[str], core: int) -> list[str]:
    """``command`` pinned to ``core`` with taskset, when the machine has that core and taskset."""
    if shutil.which("taskset") and cores() > core:
        return ["taskset", "-c", str(core), *command]
    return command


def server_core() -> int:
    return max(0, cores() - 1)


class CpuSampler(threading.Thread):
    """Samples a process's CPU seconds every ``interval_s``; answers "CPU used between t0 and t1"."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.times: list[float] = []
        self.cpu: list[float] = []
        self._stop_event = threading.Event()

    def _sample(self) -> None:
        try:
            t = self.process.cpu_times()
        except psutil.Error:
            return
        self.times.append(time.time())
        self.cpu.append(t.user + t.system)

    def run(self) -> None:  # noqa: D102
        while not self._stop_event.wait(self.interval_s):
            self._sample()

    def stop(self) -> None:
        """Stop sampling."""
        self._stop_event.set()
        self.join(timeout=5)

    def cpu_at(self, when: float) -> float | None:
        """CPU seconds used by ``when`` (linear between the samples around it)."""
        i = bisect.bisect_left(self.times, when)
        if i == 0 or i >= len(self.times):
            return None
        t0, t1, c0, c1 = self.times[i - 1], self.times[i], self.cpu[i - 1], self.cpu[i]
        return c0 + (c1 - c0) * (when - t0) / (t1 - t0) if t1 > t0 else c0

    def share(self, start: float, end: float) -> float | None:
        """Share of one core the process used between ``start`` and ``end`` (epoch seconds)."""
        a, b = self.cpu_at(start), self.cpu_at(end)
        return None if a is None or b is None or end <= start else (b - a) / (end - start)


class Upstream:
    """``benchmarks.upstream`` in its own process on the last core: ``with Upstream(50) as u: u.url``."""

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.latency_ms = latency_ms
        self.proc: subprocess.Popen | None = None
        self.sampler: CpuSampler | None = None
        self.url = ""

    def __enter__(self) -> Upstream:
        command = [sys.executable, "-m", "benchmarks.upstream", "--latency-ms", str(self.latency_ms)]
        self.proc = subprocess.Popen(pinned(command, server_core()), stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        match = re.match(r"LISTENING (\d+)", line)
        if not match:
            self.__exit__()
            raise RuntimeError(f"the benchmark upstream did not start: {line!r}")
        self.url = f"http://127.0.0.1:{match.group(1)}/v1"
        self.sampler = CpuSampler(self.proc.pid)
        self.sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def cpu_share(self, result: dict[str, Any]) -> float | None:
        """The upstream's CPU share (of one core) during a child's timed ``window``."""
        window = result.get("window")
        return self.sampler.share(*window) if self.sampler is not None and window else None


def run_child(module: str, spec: dict[str, Any], workdir: Path, *, core: int = 0,
              timeout_s: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """Run ``python -m module '<spec>'`` pinned to ``core``; its JSON result, or ``{"error": ...}``."""
    tag = f"{module.rsplit('.', 1)[-1]}-{spec.get('client') or spec.get('task') or 'run'}-{time.time_ns()}"
    out, log = workdir / f"{tag}.json", workdir / f"{tag}.log"
    spec = {**spec, "out": str(out)}
    command = pinned([sys.executable, "-m", module, json.dumps(spec)], core)
    try:
        with open(log, "wb") as log_file:
            proc = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, timeout=timeout_s,
                                  cwd=Path(__file__).resolve().parent.parent, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"{module} {spec.get('client', '')} timed out after {timeout_s:.0f} s"}
    if proc.returncode != 0 or not out.exists():
        tail = log.read_text(errors="replace")[-1500:]
        return {"error": f"{module} exited with {proc.returncode}: {tail}"}
    return json.loads(out.read_text())


def wrk_capacity(url: str, workdir: Path, seconds: int = 5) -> dict[str, Any] | None:
    """Requests/s the upstream serves to ``wrk`` (64 connections, keep-alive), or None without wrk."""
    if not shutil.which("wrk"):
        return None
    script = workdir / "post.lua"
    body = json.dumps({"model": "mock-model", "messages": [{"role": "user", "content": "What is 2+2?"}]})
    script.write_text(f"wrk.method = 'POST'\nwrk.body = '{body}'\n"
                      "wrk.headers['Content-Type'] = 'application/json'\n")
    command = pinned(["wrk", "-t1", "-c64", f"-d{seconds}s", "-s", str(script),
                      f"{url}/chat/completions"], 0)
    try:
        text = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30,
                              check=False).stdout
    except subprocess.TimeoutExpired:
        return None
    match = re.search(r"Requests/sec:\s+([\d.]+)", text)
    version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    found = re.search(r"wrk \S+", version.stdout + version.stderr)
    return {"req_s": float(match.group(1)) if match else None, "wrk": found.group(0) if found else "wrk"}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, OS, Python and package versions, date, load average."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    import sqlite3

    versions["sqlite (library)"] = sqlite3.sqlite_version
    return {
        "cpu": _cpu_model(), "cores": cores(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "load_before": os.getloadavg(),
        "pinning": "client on core 0, upstream on core 1" if shutil.which("taskset") and cores() > 1
        else "none (taskset missing or a single core)",
        "versions": versions,
    }
