"""Scenario 12's child: pacing against a server whose limit is hidden, rises or is lowered.

In one child process: the embedded ``MockServer`` enforcing ``server_rpm`` over a sliding
window of ``window_s`` seconds (60 by default; ``server_rpm * window_s / 60`` requests per window; ``headers``: with or without ``x-ratelimit-*`` headers; ``retry_after``: with or
without ``Retry-After`` on its 429s), its limit changed at the times in ``changes``, and a
minima_nb backend (``rpm``, ``adaptive``, 64 workers) running ``run_batched`` over more requests
than the duration allows, cancelled after ``duration_s``. A thin transport subclass records the
send time and status of every HTTP attempt.

Reported, all from those records (``t`` counted from the first send):
- ``ok_rate`` / ``share_429`` over ``[warm_s, end)``: 2xx answers per minute, and 429s among the
  attempts sent in that span;
- with a change: ``ok_rate_after`` over ``[change + follow_s, end)``, ``reach_s`` (the first
  time after the change at which the 2xx rate over the preceding 10 s is at least 90 % of the
  new limit), ``sent_after`` (attempts per minute over ``[change + settle_s, end)``) and
  ``settle_s_measured`` (how long after the change every 10-s window of sends stays within 5 %
  of the new limit until the end).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from typing import Any

from .workload import MODEL, child_main, messages_of, prompts

WINDOW_S = 10.0


def _per_minute(times: list[float], start: float, end: float) -> float:
    count = bisect.bisect_left(times, end) - bisect.bisect_left(times, start)
    return count * 60.0 / (end - start) if end > start else 0.0


def _reach(ok: list[float], after: float, end: float, goal: float) -> float | None:
    """Seconds after ``after`` until the 2xx rate over the preceding 10 s (all of them after
    ``after``) is >= ``goal``."""
    t = after + WINDOW_S
    while t <= end:
        if _per_minute(ok, t - WINDOW_S, t) >= goal:
            return t - after
        t += 0.5
    return None


def _settle(sent: list[float], after: float, end: float, limit: float) -> float | None:
    """Seconds after ``after`` from which every 10-s window of sends is within 5 % of ``limit``."""
    starts = [after + k * 0.5 for k in range(int((end - WINDOW_S - after) / 0.5) + 1)]
    good = [abs(_per_minute(sent, w, w + WINDOW_S) / limit - 1) <= 0.05 for w in starts]
    for k in range(len(good)):
        if all(good[k:]):
            return starts[k] - after
    return None


async def _run(url: str, spec: dict[str, Any], server: Any) -> list[tuple[float, int]]:
    from minima_nb import BatchConfig, MinimaLlmConfig, MinimaLlmRequest, OpenAIMinimaLlm
    from minima_nb.engine.transport import AiohttpTransport

    log: list[tuple[float, int]] = []

    class RecordingTransport(AiohttpTransport):
        async def request(self, method, url, **kwargs):  # noqa: D102
            sent = time.monotonic()
            reply = await super().request(method, url, **kwargs)
            log.append((sent, reply.status))
            return reply

    workers = 64
    config = MinimaLlmConfig(base_url=url, model=MODEL, api_key="bench", rpm=spec["rpm"],
                             adaptive_rpm=spec.get("adaptive", True), max_attempts=0,
                             max_outstanding=workers, batch=BatchConfig(num_workers=workers))
    backend = OpenAIMinimaLlm(config, transport=RecordingTransport())
    duration = spec["duration_s"]
    count = int(max(spec["rpm"], 600) * duration / 60 * 2) + 64
    requests = [MinimaLlmRequest(request_id=str(i), messages=messages_of(p))
                for i, p in enumerate(prompts(count))]
    loop = asyncio.get_running_loop()
    for at, rpm in spec.get("changes", []):
        loop.call_later(at, server.set_rate_limit, rpm)
    try:
        await asyncio.wait_for(backend.run_batched(requests, progress=False), duration)
    except asyncio.TimeoutError:
        pass  # the expected end: the batch outlasts the measured window
    finally:
        spec["pacer"] = backend.pacer.describe()
        await backend.aclose()
        backend.close()
    return log


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one experiment; see the module docstring."""
    from minima_nb.testing import MockServer

    began = time.monotonic()
    with MockServer(rate_limit=spec["server_rpm"], ratelimit_headers=spec.get("headers", False),
                    retry_after=spec.get("retry_after", True),
                    rate_window_s=spec.get("window_s", 60.0)) as server:
        log = asyncio.run(_run(server.base_url, spec, server))
    log.sort()
    t0 = log[0][0] if log else began
    end = t0 + spec["duration_s"]
    sent = [t - t0 for t, _ in log]
    ok = [t - t0 for t, status in log if 200 <= status < 300]
    limited = [t - t0 for t, status in log if status == 429]
    warm, stop = spec.get("warm_s", 0.0), end - t0
    in_warm = len(sent) - bisect.bisect_left(sent, warm)
    result: dict[str, Any] = {
        "sent": len(sent), "status_429": len(limited), "pacer": spec.get("pacer", ""),
        "ok_rate": _per_minute(ok, warm, stop),
        "share_429": (len(limited) - bisect.bisect_left(limited, warm)) / in_warm if in_warm else None,
    }
    if spec.get("changes"):
        at, new = spec["changes"][0]
        result["ok_rate_after"] = _per_minute(ok, at + spec.get("follow_s", 60.0), stop)
        result["reach_s"] = _reach(ok, at, stop, 0.9 * new)
        result["sent_after"] = _per_minute(sent, at + spec.get("settle_s", 10.0), stop)
        result["settle_s_measured"] = _settle(sent, at, stop, new)
        result["rate_before"] = _per_minute(ok, max(warm, at - 30.0), at)
    return result


if __name__ == "__main__":
    child_main(measure)
