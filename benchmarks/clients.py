"""The five clients, each pushing the same prompts through an OpenAI-compatible endpoint.

Each ``run_<client>(url, prompts, concurrency, **options)`` coroutine turns a list of prompts
into a list of results; :func:`texts` reads the answer texts (``None`` for a failed row) from
any of them. The clients without a batch runner of their own (raw aiohttp, openai-python,
litellm) are driven by :func:`drive`: ``concurrency`` worker tasks taking the next prompt,
the cheapest way to keep exactly that many requests in flight (a semaphore around one task per
prompt does the same with one task more per prompt).

Run as a child process (see ``workload.child_main``) this module measures one client once:
imports and a warm-up batch of 64 requests are outside the timed part; the timed part is
"prompts in, answers out", client construction and closing included.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from . import netguard
from .workload import API_KEY, MODEL, Timer, child_main, messages_of, peak_rss_bytes, prompts

CLIENTS = ("aiohttp", "minima_nb", "openai", "litellm", "minima_llm")
WARM_UP = 64


async def drive(count: int, concurrency: int, one: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """Call ``one(i)`` for every ``i < count`` with ``concurrency`` calls in flight; results in order."""
    results: list[Any] = [None] * count
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            try:
                results[i] = await one(i)
            except Exception as exc:  # noqa: BLE001  - a failed row is counted, not fatal
                results[i] = exc
    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    return results


def _chat_target(url: str) -> tuple[str, dict[str, str]]:
    """(endpoint, headers) of a raw chat-completions POST to the upstream at ``url``."""
    return f"{url}/chat/completions", {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}


async def run_aiohttp(url: str, items: list[str], concurrency: int, **_: Any) -> list[Any]:
    """Raw aiohttp: the floor. JSON in and out, one keep-alive pool."""
    import aiohttp

    endpoint, headers = _chat_target(url)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(i: int) -> str:
            body = json.dumps({"model": MODEL, "messages": messages_of(items[i])}).encode()
            async with session.post(endpoint, data=body, headers=headers) as resp:
                data = json.loads(await resp.read())
            return data["choices"][0]["message"]["content"]
        return await drive(len(items), concurrency, one)


async def run_minima_nb(url: str, items: list[str], concurrency: int, *, cache_dir: str | None = None,
                        transport: str = "auto", **_: Any) -> list[Any]:
    """minima_nb ``run_batched``: no pacing, ``concurrency`` workers and requests in flight;
    the default transport unless ``transport`` names one."""
    from minima_nb import BatchConfig, MinimaLlmConfig, MinimaLlmRequest, OpenAIMinimaLlm

    config = MinimaLlmConfig(base_url=url, model=MODEL, api_key=API_KEY, cache_dir=cache_dir,
                             rpm=0, max_outstanding=concurrency, transport=transport,
                             batch=BatchConfig(num_workers=concurrency))
    backend = OpenAIMinimaLlm(config)
    try:
        requests = [MinimaLlmRequest(request_id=str(i), messages=messages_of(p))
                    for i, p in enumerate(items)]
        results = await backend.run_batched(requests, progress=False)
        await backend.aclose()
        return results
    finally:
        backend.close()


async def run_openai(url: str, items: list[str], concurrency: int, **_: Any) -> list[Any]:
    """openai-python ``AsyncOpenAI`` (its own httpx pool), no retries."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key=API_KEY, max_retries=0)
    try:
        async def one(i: int) -> str:
            reply = await client.chat.completions.create(model=MODEL, messages=messages_of(items[i]))
            return reply.choices[0].message.content
        return await drive(len(items), concurrency, one)
    finally:
        await client.close()


async def run_litellm(url: str, items: list[str], concurrency: int, **_: Any) -> list[Any]:
    """litellm ``acompletion`` against the OpenAI-compatible endpoint, no retries."""
    import litellm

    litellm.suppress_debug_info = True

    async def one(i: int) -> str:
        reply = await litellm.acompletion(model=f"openai/{MODEL}", messages=messages_of(items[i]),
                                          api_base=url, api_key=API_KEY, num_retries=0)
        return reply.choices[0].message.content
    return await drive(len(items), concurrency, one)


async def run_minima_llm(url: str, items: list[str], concurrency: int, **_: Any) -> list[Any]:
    """minima-llm 0.2.8 ``run_batched``, configured through its environment variables."""
    from minima_llm import MinimaLlmRequest, OpenAIMinimaLlm

    backend = OpenAIMinimaLlm.from_env()
    try:
        requests = [MinimaLlmRequest(request_id=str(i), messages=messages_of(p))
                    for i, p in enumerate(items)]
        return await backend.run_batched(requests)
    finally:
        await backend.aclose()


RUNNERS = {"aiohttp": run_aiohttp, "minima_nb": run_minima_nb, "openai": run_openai,
           "litellm": run_litellm, "minima_llm": run_minima_llm}
_IMPORTS = {"aiohttp": "aiohttp", "minima_nb": "minima_nb", "openai": "openai",
            "litellm": "litellm", "minima_llm": "minima_llm"}


def prepare_environment(client: str, url: str, concurrency: int) -> None:
    """Network guard and the settings peers read from the environment; call before importing."""
    netguard.install()
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no model-cost map from the internet
    os.environ["LITELLM_TELEMETRY"] = "False"
    os.environ.pop("CACHE_DIR", None)
    if client == "minima_llm":
        os.environ.update({"OPENAI_BASE_URL": url, "OPENAI_MODEL": MODEL, "OPENAI_API_KEY": API_KEY,
                           "RPM": "0", "MAX_OUTSTANDING": str(concurrency),
                           "BATCH_NUM_WORKERS": str(concurrency)})


def texts(results: list[Any]) -> list[str | None]:
    """Answer text per row: a string, or None for a failure or an exception."""
    out = []
    for r in results:
        text = r if isinstance(r, str) else getattr(r, "text", None)
        out.append(text if isinstance(text, str) else None)
    return out


async def _round_trips(url: str, count: int) -> list[float]:
    """Seconds per request, one at a time on one kept-alive connection (raw aiohttp)."""
    import time

    import aiohttp

    endpoint, headers = _chat_target(url)
    seconds = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for i in range(count + 1):  # the first opens the connection: not counted
            body = json.dumps({"model": MODEL, "messages": messages_of(f"round trip {i}")}).encode()
            started = time.perf_counter()
            async with session.post(endpoint, data=body, headers=headers) as resp:
                await resp.read()
            if i:
                seconds.append(time.perf_counter() - started)
    return seconds


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One timed run of ``spec["client"]`` over ``spec["n"]`` prompts (or the round-trip probe)."""
    if spec.get("probe") == "round_trip":
        netguard.install()
        seconds = sorted(asyncio.run(_round_trips(spec["url"], spec["n"])))
        return {"mean_s": sum(seconds) / len(seconds), "median_s": seconds[len(seconds) // 2]}
    client, url, concurrency = spec["client"], spec["url"], spec.get("concurrency", 64)
    prepare_environment(client, url, concurrency)
    with Timer() as imported:
        __import__(_IMPORTS[client])
    items = prompts(spec["n"], spec.get("offset", 0))
    runner = RUNNERS[client]
    # A small untimed batch first (other prompts), so that what a client imports or
    # builds on first use is not charged to the measured batch; each run still opens its own
    # connections, except where a client keeps them process-wide itself.
    # With a cache, the warm-up uses one too (its own directory), so that the first cache's costs
    # (the writer thread, the lookup thread pool, first connections) are not charged either.
    warm_cache = f"{spec['cache_dir']}-warm-up" if spec.get("cache_dir") else None
    asyncio.run(runner(url, prompts(WARM_UP, offset=len(items) + 1_000_000), concurrency, cache_dir=warm_cache))

    async def timed() -> tuple[list[Any], Timer]:
        with Timer() as t:
            results = await runner(url, items, concurrency, cache_dir=spec.get("cache_dir"))
        return results, t

    results, t = asyncio.run(timed())
    answers = texts(results)
    ok = sum(a is not None for a in answers)
    first_error = next((repr(r)[:300] for r, a in zip(results, answers, strict=True) if a is None), None)
    return {"client": client, "n": len(items), "ok": ok, "wall_s": t.wall_s, "cpu_s": t.cpu_s,
            "sys_s": t.sys_s, "switches": t.switches, "window": [t.start_epoch, t.end_epoch],
            "import_s": imported.wall_s, "peak_rss": peak_rss_bytes(),
            "blocked_network": list(netguard.blocked), "first_error": first_error,
            "python": sys.version.split()[0]}


if __name__ == "__main__":
    child_main(measure)
