"""Four client processes through one proxy, against an upstream that enforces a rate limit.

The proxy's one pacer keeps the four under the limit together, so no client sees a 429 and the
upstream never refuses; identical prompts asked by several processes at once go upstream once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from minima_nb import ProxyServer
from minima_nb.testing import MockServer

from .conftest import UPSTREAM_KEY, upstream_config

WORKER = Path(__file__).with_name("_client_worker.py")


def test_four_processes_share_one_pace_and_one_cache(tmp_path):
    shared = [f"shared question {i}" for i in range(6)]
    own = {w: [f"worker {w} question {i}" for i in range(4)] for w in range(4)}
    # 20 requests per second over a 1 s window, as a provider enforcing "1,200 RPM" per second;
    # the proxy is configured for a quarter of it.
    with MockServer(require_api_key=UPSTREAM_KEY, rate_limit=1200, rate_window_s=1.0) as upstream:
        config = upstream_config(upstream, tmp_path / "cache", rpm=300)
        with ProxyServer(config, port=0) as proxy:
            children = [subprocess.Popen([sys.executable, str(WORKER), proxy.base_url,
                                          *shared, *own[w]], stdout=subprocess.PIPE, text=True)
                        for w in range(4)]
            outputs = []
            for child in children:
                out, _ = child.communicate(timeout=90)
                assert child.returncode == 0
                outputs.append(json.loads(out))
            metrics = proxy.metrics.snapshot()
        answers = [a for output in outputs for a in output]
        assert len(answers) == 40
        assert [a for a in answers if a["status"] != 200] == []  # no 429, nor anything else
        assert all(a["text"] == f"[mock-model] echo: {a['prompt']}" for a in answers)
        distinct = set(shared) | {p for prompts in own.values() for p in prompts}
        assert {p: upstream.requests_for(p) for p in distinct} == dict.fromkeys(distinct, 1)
        assert upstream.requests_total == len(distinct) == 22
        assert 429 not in upstream.responses_by_status
        assert metrics["upstream_429"] == 0 and metrics["misses"] == 22 and metrics["hits"] == 18
