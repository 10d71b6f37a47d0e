"""Scenario 7: pacing accuracy against a server that enforces its limit.

In one child process: the embedded ``MockServer`` enforcing ``rate_limit`` requests per minute
(sliding 60-second window, OpenAI-style ``x-ratelimit-*`` headers, 429 past the limit) and a
minima_nb backend configured with ``rpm`` and ``run_batched`` over more requests than the
duration allows. The batch is cancelled after ``duration_s``; the send time of every HTTP
attempt is recorded by a thin transport subclass. With ``lower_to`` set, the server lowers its
limit to that value half-way through (the headers of later answers carry the new limit).

Reported: the achieved rate over the whole run (the initial burst included), the steady rate
(after the first ``STEADY_AFTER_S`` seconds), the rate in each half, and the 429 count.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from typing import Any

from .workload import MODEL, child_main, messages_of, prompts

STEADY_AFTER_S = 2.0


def _rate(times: list[float], start: float, end: float) -> float:
    """Requests per minute sent in ``[start, end)``."""
    count = bisect.bisect_left(times, end) - bisect.bisect_left(times, start)
    return count * 60.0 / (end - start) if end > start else 0.0


async def _paced_run(url: str, spec: dict[str, Any], server: Any) -> tuple[list[float], float]:
    from minima_nb import BatchConfig, MinimaLlmConfig, MinimaLlmRequest, OpenAIMinimaLlm
    from minima_nb.engine.transport import AiohttpTransport

    sent: list[float] = []

    class RecordingTransport(AiohttpTransport):
        async def request(self, method, url, **kwargs):  # noqa: D102
            sent.append(time.monotonic())
            return await super().request(method, url, **kwargs)

    workers = spec.get("concurrency", 64)
    config = MinimaLlmConfig(base_url=url, model=MODEL, api_key="bench", rpm=spec["rpm"],
                             max_outstanding=workers, batch=BatchConfig(num_workers=workers))
    backend = OpenAIMinimaLlm(config, transport=RecordingTransport())
    duration = spec["duration_s"]
    count = int(spec["rpm"] * duration / 60 * 2) + 64  # more than the duration allows
    requests = [MinimaLlmRequest(request_id=str(i), messages=messages_of(p))
                for i, p in enumerate(prompts(count))]
    loop = asyncio.get_running_loop()
    began = time.monotonic()
    if spec.get("lower_to"):
        loop.call_later(duration / 2, server.set_rate_limit, spec["lower_to"])
    try:
        await asyncio.wait_for(backend.run_batched(requests, progress=False), duration)
    except asyncio.TimeoutError:
        pass  # the expected end: the batch outlasts the measured window
    finally:
        await backend.aclose()
        backend.close()
    return sent, began


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one pacing experiment; see the module docstring."""
    from minima_nb.testing import MockServer

    with MockServer(rate_limit=spec["server_rpm"]) as server:
        sent, began = asyncio.run(_paced_run(server.base_url, spec, server))
        statuses = server.responses_by_status
    duration = spec["duration_s"]
    t0 = sent[0] if sent else began
    half = t0 + duration / 2
    end = began + duration
    return {
        "rpm": spec["rpm"], "server_rpm": spec["server_rpm"], "lower_to": spec.get("lower_to"),
        "duration_s": duration, "sent": len(sent),
        "rate_overall": _rate(sent, t0, end),
        "rate_steady": _rate(sent, t0 + STEADY_AFTER_S, end),
        "rate_first_half": _rate(sent, t0, half),
        "rate_second_half": _rate(sent, half, end),
        "rate_second_half_steady": _rate(sent, half + STEADY_AFTER_S, end),
        "status_429": statuses.get(429, 0), "status_200": statuses.get(200, 0),
    }


if __name__ == "__main__":
    child_main(measure)
