"""Scenario 8: the caching proxy against bare aiohttp.web handlers and the LiteLLM proxy.

Each server runs in its own process pinned to core 0 (so its CPU is its own, read with psutil);
the fast upstream and the load generator run on core 1. The load is wrk (one thread, 64
keep-alive connections, a few seconds per run; without wrk, 64 aiohttp clients sending a fixed
number of requests):

* **misses**: a new prompt per request, every one forwarded upstream (minima: through its
  cache, pacer off, retries on; the floor: an aiohttp.web handler that reads the body and
  posts it on);
* **hits**: the prompts of the misses replayed, answered from the proxy's cache (LiteLLM: its
  in-memory cache; the floor: an aiohttp.web handler returning a constant JSON body).

minima's proxy and both floors run on asyncio's loop and on uvloop (kinds ``<kind>+uvloop``).
Run a server alone: ``python -m benchmarks.scenarios_proxy serve minima[+uvloop] <upstream url>
<port> <dir>`` (also ``floor``, ``constant``, ``litellm``).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import report
from .harness import CpuSampler, Upstream, pinned, server_core

CONCURRENCY = 64
RUN_SECONDS = 8  # each run under wrk (misses, then hits)
LITELLM_CAP = 1_000  # LiteLLM answers ~70 req/s here: more would take minutes per round
MASTER_KEY = "sk-bench-master"
_START_TIMEOUT_S = 120.0


# -- the proxies (child process side) ---------------------------------------------------------

_UVLOOP = False  # set in the child by a kind named "<kind>+uvloop"


def _new_loop() -> asyncio.AbstractEventLoop:
    if _UVLOOP:
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _serve_minima(upstream: str, port: int, workdir: str) -> None:
    from minima_nb import MinimaLlmConfig, ProxyServer
    from minima_nb.servers.proxy.server import tune_gc_for_serving

    config = MinimaLlmConfig(base_url=upstream, model="mock-model", api_key="sk-bench",
                             cache_dir=workdir, rpm=0, max_outstanding=CONCURRENCY)
    serve = ProxyServer(config, port=port).run()
    tune_gc_for_serving()  # as ``minima-nb proxy`` does once it listens (minima_nb/cli/proxy.py)
    if _UVLOOP:
        import uvloop

        uvloop.run(serve)
    else:
        asyncio.run(serve)


def _serve_floor(upstream: str, port: int, workdir: str) -> None:
    import aiohttp
    from aiohttp import web

    target = upstream.rstrip("/") + "/chat/completions"

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        async with request.app["session"].post(target, data=body, headers={
                "Content-Type": "application/json", "Authorization": "Bearer sk-bench"}) as reply:
            data = await reply.read()
            return web.Response(body=data, status=reply.status, content_type="application/json")

    async def session(app: web.Application) -> Any:
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY))
        yield
        await app["session"].close()

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_post("/v1/chat/completions", forward)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=_new_loop())


def _serve_constant(upstream: str, port: int, workdir: str) -> None:
    """The hits' floor: an aiohttp.web handler that reads the body and returns a constant JSON answer."""
    from aiohttp import web

    body = json.dumps({"id": "chatcmpl-floor", "object": "chat.completion", "created": 0,
                       "model": "mock-model", "choices": [{"index": 0, "message": {
                           "role": "assistant", "content": "floor"}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
                      ).encode()

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=_new_loop())


def _serve_litellm(upstream: str, port: int, workdir: str) -> None:
    from litellm.proxy.proxy_cli import run_server

    config = Path(workdir) / "litellm.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "model_list": [{"model_name": "mock-model", "litellm_params": {
            "model": "openai/mock-model", "api_base": upstream, "api_key": "sk-bench"}}],
        "general_settings": {"master_key": MASTER_KEY},
        "litellm_settings": {"cache": True, "cache_params": {"type": "local"}, "telemetry": False},
    }))
    run_server.main(args=["--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                          "--num_workers", "1"], standalone_mode=False)


# -- the load (parent side) -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proxy:
    """One proxy in its own process on core 0, with a CPU sampler on it."""

    def __init__(self, kind: str, upstream: str, workdir: Path) -> None:
        self.kind, self.port = kind, _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        workdir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "benchmarks.scenarios_proxy", "serve", kind, upstream,
                   str(self.port), str(workdir)]
        env = {**_environ(), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        self.log = open(workdir / f"{kind}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(pinned(command, 0), stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env, cwd=Path(__file__).resolve().parent.parent)
        self.sampler = CpuSampler(self.proc.pid, interval_s=0.02)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the {self.kind} proxy exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                self.sampler.start()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the {self.kind} proxy did not listen within {_START_TIMEOUT_S:.0f} s")

    def close(self) -> None:
        if self.sampler.is_alive():
            self.sampler.stop()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


async def _load(url: str, prompts: list[str], headers: dict[str, str]) -> dict[str, Any]:
    """Send every prompt once over 64 keep-alive connections; wall time and failures."""
    import aiohttp

    bodies = [json.dumps({"model": "mock-model", "messages": [{"role": "user", "content": p}]})
              for p in prompts]
    failures: list[int] = []
    queue = iter(bodies)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, headers={
            "Content-Type": "application/json", **headers}) as session:
        async def worker() -> None:
            for body in queue:  # shared iterator: bounded by the number of prompts
                async with session.post(url, data=body) as reply:
                    await reply.read()
                    if reply.status != 200:
                        failures.append(reply.status)

        start = time.time()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(CONCURRENCY))), 600)
        end = time.time()
    return {"window": (start, end), "n": len(prompts), "failures": len(failures)}


def _measure(proxy: Proxy, prompts: list[str]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    result = asyncio.run(_load(proxy.url, prompts, headers))
    start, end = result["window"]
    time.sleep(0.1)  # one more CPU sample after the window
    a, b = proxy.sampler.cpu_at(start), proxy.sampler.cpu_at(end)
    seconds = end - start
    return {"req_s": result["n"] / seconds, "failures": result["failures"],
            "cpu_us": None if a is None or b is None else (b - a) / result["n"] * 1e6,
            "cpu_share": None if a is None or b is None else (b - a) / seconds}


def _warm(proxy: Proxy, tag: str) -> None:
    asyncio.run(_load(proxy.url, [f"warm-up {tag} {i}" for i in range(CONCURRENCY * 2)],
                      {"Authorization": f"Bearer {MASTER_KEY}"}))


def scenario_proxy(upstream: Upstream, workdir: Path, rounds: int, n: int, n_hits: int,
                   log: Any) -> report.Section:
    """Scenario 8's section: misses and hits through each proxy, ``rounds`` times."""
    import os

    kinds = ("minima", "minima+uvloop", "floor", "floor+uvloop", "constant", "constant+uvloop",
             "litellm")
    figures: dict[tuple[str, str], list[dict[str, Any]]] = {}
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {server_core()})  # the load generator beside the upstream
    try:
        _rounds(kinds, upstream, workdir, rounds, n, n_hits, figures, log)
    finally:
        os.sched_setaffinity(0, affinity)
    return _section(figures, n, n_hits)


def _rounds(kinds: tuple[str, ...], upstream: Upstream, workdir: Path, rounds: int, n: int,
            n_hits: int, figures: dict[tuple[str, str], list[dict[str, Any]]], log: Any) -> None:
    for round_no in range(rounds):
        shift = round_no % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            if kind == "litellm" and round_no > 0:
                continue  # one LiteLLM round: it is slow and its figure is far from the others
            size = min(n, LITELLM_CAP) if kind == "litellm" else n
            hits = min(n_hits, LITELLM_CAP) if kind == "litellm" else n_hits
            prefix = f"proxy bench {round_no} question "
            prompts = [f"{prefix}{i}" for i in range(size)]
            proxy = Proxy(kind, upstream.url, workdir / f"proxy-{kind.replace('+', '-')}-{round_no}")
            try:
                proxy.wait_ready()
                _warm(proxy, f"{kind}{round_no}")
                if not kind.startswith("constant"):  # the constant handler has no misses
                    misses = _measure_misses(proxy, prefix, prompts, workdir)
                    prompts = [f"{prefix}{i}" for i in range(misses["sent"])]
                    figures.setdefault((kind, "misses"), []).append(misses)
                    log(f"  round {round_no + 1} {kind} misses: {misses['req_s']:,.0f} req/s, "
                        f"{misses['cpu_us'] or 0:,.0f} µs CPU/request")
                if not kind.startswith("floor"):  # the forwarder has no cache
                    got = _measure_hits(proxy, prompts, hits, workdir)
                    figures.setdefault((kind, "hits"), []).append(got)
                    log(f"  round {round_no + 1} {kind} hits: {got['req_s']:,.0f} req/s, "
                        f"{got['cpu_us'] or 0:,.0f} µs CPU/request, {got['cpu_share'] or 0:.0%} "
                        f"of its core ({got['generator']})")
            except Exception as exc:  # a peer that will not start is reported, not fatal
                log(f"  round {round_no + 1} {kind}: failed: {exc}")
            finally:
                proxy.close()


# wrk's scripts. Hits: the prompts of the misses, each request built once, sent in turn. Misses:
# a new prompt per request, numbered from 0 (so the prompts sent are known afterwards).
_WRK_HITS = """
local n = tonumber(os.getenv("BENCH_N"))
local prefix = os.getenv("BENCH_PREFIX")
local auth = os.getenv("BENCH_AUTH")
local requests = {}
init = function(args)
  for i = 0, n - 1 do
    local body = '{"model": "mock-model", "messages": [{"role": "user", "content": "'
                 .. prefix .. i .. '"}]}'
    requests[i + 1] = wrk.format("POST", nil, {["Content-Type"] = "application/json",
                                               ["Authorization"] = auth}, body)
  end
end
local i = 0
request = function()
  i = i % n + 1
  return requests[i]
end
"""
_WRK_MISSES = """
local threads = {}
setup = function(thread)
  table.insert(threads, thread)
end
local prefix = os.getenv("BENCH_PREFIX")
local headers = {["Content-Type"] = "application/json", ["Authorization"] = os.getenv("BENCH_AUTH")}
counter = -1  -- a global, so that done() can read it back through the thread
request = function()
  counter = counter + 1
  return wrk.format("POST", nil, headers, '{"model": "mock-model", "messages": [{"role": "user", '
                    .. '"content": "' .. prefix .. counter .. '"}]}')
end
done = function(summary, latency, requests)
  local sent = 0
  for _, thread in ipairs(threads) do
    sent = sent + thread:get("counter") + 1
  end
  io.write(string.format("BENCH_SENT %d\\n", sent))
end
"""


def _measure_misses(proxy: Proxy, prefix: str, prompts: list[str], workdir: Path) -> dict[str, Any]:
    """New prompts for RUN_SECONDS by wrk (or, without wrk, ``prompts`` by the aiohttp loader);
    ``sent`` is how many prompts went out (numbered from 0), for the hits to replay."""
    if not shutil.which("wrk"):
        return {**_measure(proxy, prompts), "generator": "aiohttp", "sent": len(prompts)}
    got = _wrk(proxy, _WRK_MISSES, {"BENCH_PREFIX": prefix}, workdir / "misses.lua")
    time.sleep(0.5)  # answers cut off at the end still land in the proxy's cache
    return got


def _measure_hits(proxy: Proxy, prompts: list[str], hits: int, workdir: Path) -> dict[str, Any]:
    """The cached prompts replayed for RUN_SECONDS by wrk, or, without wrk, ``hits`` requests
    by the aiohttp loader."""
    if not shutil.which("wrk"):
        replay = (prompts * (hits // len(prompts) + 1))[:hits]
        return {**_measure(proxy, replay), "generator": "aiohttp"}
    prefix = prompts[0][:-1]  # "proxy bench R question " (prompts end in their index, 0 first)
    return _wrk(proxy, _WRK_HITS, {"BENCH_N": str(len(prompts)), "BENCH_PREFIX": prefix},
                workdir / "hits.lua")


def _wrk(proxy: Proxy, script_text: str, env: dict[str, str], script: Path) -> dict[str, Any]:
    """One wrk run (one thread, 64 keep-alive connections, on the other core) against ``proxy``."""
    script.write_text(script_text)
    env = {**_environ(), **env, "BENCH_AUTH": f"Bearer {MASTER_KEY}"}
    command = pinned(["wrk", "-t1", f"-c{CONCURRENCY}", f"-d{RUN_SECONDS}s", "--timeout", "10s",
                      "-s", str(script), proxy.url], server_core())
    start = time.time()
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False,
                         timeout=RUN_SECONDS + 60).stdout
    end = time.time()
    time.sleep(0.1)  # one more CPU sample after the window
    done = re.search(r"(\d+) requests in", out)
    if done is None:
        raise RuntimeError(f"wrk gave no figures: {out[-500:]!r}")
    count = int(done.group(1))
    failed = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    failed += sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    sent = re.search(r"BENCH_SENT (\d+)", out)
    a, b = proxy.sampler.cpu_at(start), proxy.sampler.cpu_at(end)
    seconds = end - start
    return {"req_s": count / seconds, "failures": failed, "generator": "wrk",
            "sent": int(sent.group(1)) if sent else count,
            "cpu_us": None if a is None or b is None else (b - a) / count * 1e6,
            "cpu_share": None if a is None or b is None else (b - a) / seconds}


_NAMES = {"minima": "minima_nb proxy", "minima+uvloop": "minima_nb proxy on uvloop",
          "floor": "bare aiohttp.web forwarder (misses floor)",
          "floor+uvloop": "the same forwarder on uvloop (misses floor on uvloop)",
          "constant": "bare aiohttp.web handler returning a constant JSON body (hits floor)",
          "constant+uvloop": "the same constant handler on uvloop (hits floor on uvloop)",
          "litellm": "LiteLLM proxy"}


def _section(figures: dict[tuple[str, str], list[dict[str, Any]]], n: int, n_hits: int) -> report.Section:
    rows = []
    for kind in _NAMES:
        for workload in ("misses", "hits"):
            runs = figures.get((kind, workload))
            if not runs:
                continue
            per_core = [1e6 / r["cpu_us"] if r["cpu_us"] else None for r in runs]
            rows.append([f"{_NAMES[kind]}, {workload}",
                         report.spread([r["req_s"] for r in runs], report.count),
                         report.spread([r["cpu_us"] for r in runs], report.micro),
                         report.spread(per_core, report.count),
                         report.spread([r["cpu_share"] for r in runs], report.percent),
                         str(sum(r["failures"] for r in runs))])

    def med(kind: str, workload: str, field: str) -> float | None:
        return report.median([r[field] for r in figures.get((kind, workload), [])])

    targets = []
    for kind, floor_kind in (("minima", "constant"), ("minima+uvloop", "constant+uvloop")):
        cpu, floor_cpu = med(kind, "hits", "cpu_us"), med(floor_kind, "hits", "cpu_us")
        rate = med(kind, "hits", "req_s")
        if cpu is None:
            continue
        ratio = f", {cpu / floor_cpu:.2f}x the floor's CPU" if floor_cpu else ""
        loop = " on uvloop" if "uvloop" in kind else ""
        targets.append(report.Target(
            f"8 proxy hits{loop}", ">= 5,000 req/s on one core",
            f"{1e6 / cpu:,.0f} req/s per core of CPU ({cpu:,.0f} µs/hit{ratio}; measured "
            f"{rate or 0:,.0f} req/s)", 1e6 / cpu >= 5_000))
    for kind, floor_kind in (("minima", "floor"), ("minima+uvloop", "floor+uvloop")):
        ours, floor = med(kind, "misses", "cpu_us"), med(floor_kind, "misses", "cpu_us")
        if ours is None:
            continue
        factor = ours / floor if floor else None
        targets.append(report.Target(
            "8 proxy misses" + (" on uvloop" if "uvloop" in kind else ""),
            "CPU/request <= 2x a bare aiohttp forwarder",
            f"{factor:.2f}x ({ours:,.0f} vs {floor:,.0f} µs)" if factor and floor else "n/a",
            None if factor is None else factor <= 2.0))
    for workload in ("misses", "hits"):
        a, b = med("minima", workload, "req_s"), med("litellm", workload, "req_s")
        times = a / b if a and b else None
        targets.append(report.Target(f"8 proxy {workload}", ">= 10x LiteLLM proxy throughput",
                                     f"{times:,.1f}x" if times else "n/a",
                                     None if times is None else times >= 10.0))
    if shutil.which("wrk"):
        load = (f"wrk (one thread, {CONCURRENCY} keep-alive connections) on core 1, for "
                f"{RUN_SECONDS} s per run. Misses: a new prompt per request, forwarded to the fast "
                "upstream. Hits: the prompts of the misses replayed")
    else:
        load = (f"{CONCURRENCY} keep-alive aiohttp clients on core 1 (wrk not installed). Misses: "
                f"{n:,} distinct prompts (LiteLLM: {LITELLM_CAP:,}) forwarded to the fast upstream. "
                f"Hits: {n_hits:,} requests (LiteLLM: {LITELLM_CAP:,}) replaying them")
    return report.Section(
        title="8. Caching proxy: minima_nb vs bare aiohttp.web handlers vs the LiteLLM proxy",
        about=(f"Load: {load} from the proxy's cache (LiteLLM: its in-memory cache), with the "
               "same body bytes each time, as a re-run sends them. Each server runs alone in its "
               "own process on core 0; the upstream and the load generator run on core 1. CPU is "
               "the server process's; 'per core of CPU' is 1 s of CPU divided by the CPU per "
               "request, the rate the server sustains when it has its core to itself."),
        header=["server, workload", "req/s", "server CPU / request", "req/s per core of CPU",
                "server CPU share", "failed"],
        rows=rows,
        notes=["The misses floor reads each body and posts it upstream with one aiohttp session: "
               "no parsing, no cache, no retries. The hits floor reads each body and answers a "
               "constant chat.completion. minima's proxy checks, parses (a body seen a moment "
               "ago is remembered), keys and looks up every request in SQLite (one read per hit) "
               "and sends the stored upstream body as it is. A miss runs in its own request's "
               "handler (identical requests in flight wait on it), is keyed from kept parts, "
               "finds nothing to adopt from without reading the file's schema again, goes "
               "upstream through the engine (pacer, retries) and is queued for the cache's "
               "writer thread, whose CPU is the proxy process's too. minima's proxy is served "
               "as `minima-nb proxy` serves it: what starting made is frozen out of the garbage "
               "collector (gc.freeze) and young collections wait for 5,000 new objects once it "
               "listens; the floors are plain aiohttp.web.",
               "LiteLLM ran one round (its throughput makes more rounds minutes long)."],
        targets=targets,
    )


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "serve":
        from . import netguard

        netguard.install()
        serve = {"minima": _serve_minima, "floor": _serve_floor, "constant": _serve_constant,
                 "litellm": _serve_litellm}
        kind, _, loop = sys.argv[2].partition("+")
        _UVLOOP = loop == "uvloop"
        serve[kind](sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        sys.exit("usage: python -m benchmarks.scenarios_proxy serve minima|floor|constant|litellm[+uvloop] "
                 "<upstream base url> <port> <work dir>")
