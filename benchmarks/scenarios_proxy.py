"""Scenario 8: the caching proxy against a bare aiohttp forwarder and the LiteLLM proxy.

Each proxy runs in its own process pinned to core 0 (so its CPU is its own, read with psutil);
the fast upstream and the load generator share core 1. The load is 64 concurrent keep-alive
aiohttp clients on loopback, each sending its share of a fixed number of requests:

* **misses**: distinct prompts, every one forwarded upstream (minima: through its cache, pacer
  off, retries on; the floor: an aiohttp.web handler that reads the body and posts it on);
* **hits**: the same prompts again, answered from the proxy's cache (the floor has none; LiteLLM
  with its in-memory cache switched on).

Run a proxy alone: ``python -m benchmarks.scenarios_proxy serve minima <upstream url> <port> <dir>``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import report
from .harness import CpuSampler, Upstream, pinned, server_core

CONCURRENCY = 64
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

    config = MinimaLlmConfig(base_url=upstream, model="mock-model", api_key="sk-bench",
                             cache_dir=workdir, rpm=0, max_outstanding=CONCURRENCY)
    serve = ProxyServer(config, port=port).run()
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

    kinds = ("minima", "floor", "litellm")
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
        for kind in kinds[round_no % 3:] + kinds[:round_no % 3]:
            if kind == "litellm" and round_no > 0:
                continue  # one LiteLLM round: it is slow and its figure is far from the others
            size = min(n, LITELLM_CAP) if kind == "litellm" else n
            hits = min(n_hits, LITELLM_CAP) if kind == "litellm" else n_hits
            prompts = [f"proxy bench {round_no} question {i}" for i in range(size)]
            proxy = Proxy(kind, upstream.url, workdir / f"proxy-{kind}-{round_no}")
            try:
                proxy.wait_ready()
                _warm(proxy, f"{kind}{round_no}")
                misses = _measure(proxy, prompts)
                figures.setdefault((kind, "misses"), []).append(misses)
                log(f"  round {round_no + 1} {kind} misses: {misses['req_s']:,.0f} req/s, "
                    f"{misses['cpu_us'] or 0:,.0f} µs CPU/request")
                if kind != "floor":
                    replay = (prompts * (hits // len(prompts) + 1))[:hits]
                    got = _measure(proxy, replay)
                    figures.setdefault((kind, "hits"), []).append(got)
                    log(f"  round {round_no + 1} {kind} hits: {got['req_s']:,.0f} req/s, "
                        f"{got['cpu_us'] or 0:,.0f} µs CPU/request")
            except Exception as exc:  # a peer that will not start is reported, not fatal
                log(f"  round {round_no + 1} {kind}: failed: {exc}")
            finally:
                proxy.close()


def _section(figures: dict[tuple[str, str], list[dict[str, Any]]], n: int, n_hits: int) -> report.Section:
    names = {"minima": "minima_nb proxy", "floor": "bare aiohttp.web forwarder (floor)",
             "litellm": "LiteLLM proxy"}
    rows = []
    for kind in ("minima", "floor", "litellm"):
        for workload in ("misses", "hits"):
            runs = figures.get((kind, workload))
            if not runs:
                continue
            rows.append([f"{names[kind]}, {workload}",
                         report.spread([r["req_s"] for r in runs], report.count),
                         report.spread([r["cpu_us"] for r in runs], report.micro),
                         report.spread([r["cpu_share"] for r in runs], report.percent),
                         str(sum(r["failures"] for r in runs))])

    def med(kind: str, workload: str, field: str) -> float | None:
        return report.median([r[field] for r in figures.get((kind, workload), [])])

    targets = []
    hit_rate = med("minima", "hits", "req_s")
    targets.append(report.Target("8 proxy hits", ">= 5,000 req/s on one core",
                                 f"{hit_rate:,.0f} req/s" if hit_rate else "n/a",
                                 None if hit_rate is None else hit_rate >= 5_000))
    ours, floor = med("minima", "misses", "cpu_us"), med("floor", "misses", "cpu_us")
    factor = ours / floor if ours and floor else None
    targets.append(report.Target("8 proxy misses", "CPU/request <= 2x a bare aiohttp forwarder",
                                 f"{factor:.2f}x ({ours:,.0f} vs {floor:,.0f} µs)" if factor
                                 and ours and floor else "n/a",
                                 None if factor is None else factor <= 2.0))
    for workload in ("misses", "hits"):
        a, b = med("minima", workload, "req_s"), med("litellm", workload, "req_s")
        times = a / b if a and b else None
        targets.append(report.Target(f"8 proxy {workload}", ">= 10x LiteLLM proxy throughput",
                                     f"{times:,.1f}x" if times else "n/a",
                                     None if times is None else times >= 10.0))
    return report.Section(
        title="8. Caching proxy: minima_nb vs a bare aiohttp forwarder vs the LiteLLM proxy",
        about=(f"{CONCURRENCY} concurrent keep-alive aiohttp clients on loopback. Misses: {n:,} "
               f"distinct prompts (LiteLLM: {LITELLM_CAP:,}) forwarded to the fast upstream; hits: "
               f"{n_hits:,} requests (LiteLLM: {LITELLM_CAP:,}) replaying them from the proxy's cache "
               "(LiteLLM: its in-memory cache). Each proxy runs alone in its own process on core 0; "
               "the upstream and the load generator share core 1. CPU is the proxy process's."),
        header=["proxy, workload", "req/s", "proxy CPU / request", "proxy CPU share", "failed"],
        rows=rows,
        notes=["The floor reads each body and posts it upstream with one aiohttp session: no "
               "parsing, no cache, no retries. minima's proxy parses, keys, looks up and stores "
               "every request, with its pacer and retry policy on the way.",
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
        sys.exit("usage: python -m benchmarks.scenarios_proxy serve minima|floor|litellm "
                 "<upstream base url> <port> <work dir>")
