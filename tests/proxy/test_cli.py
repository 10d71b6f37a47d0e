"""``minima-nb proxy`` in a real child process: it prints where to point clients, serves, and
ends with one line on Ctrl-C after committing the cache."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys

import openai

from minima_nb.cli.main import main

from .conftest import UPSTREAM_KEY


def _env(upstream, cache_dir) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MINIMA_"))}
    env.update(OPENAI_BASE_URL=upstream.base_url, OPENAI_MODEL="mock-model",
               OPENAI_API_KEY=UPSTREAM_KEY, CACHE_DIR=str(cache_dir), BATCH_HEARTBEAT_S="0.2")
    return env


def test_serves_and_ends_with_one_line_on_ctrl_c(upstream, cache_dir):
    child = subprocess.Popen([sys.executable, "-m", "minima_nb.cli", "proxy", "--port", "0"],
                             env=_env(upstream, cache_dir), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        banner = child.stdout.readline()
        assert "listening on http://127.0.0.1:" in banner and "OPENAI_BASE_URL=" in banner
        base_url = banner.split("export OPENAI_BASE_URL=")[1].split()[0]
        client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)
        for _ in range(3):
            answer = client.chat.completions.create(model="mock-model",
                                                    messages=[{"role": "user", "content": "cli"}])
        assert answer.choices[0].message.content == "[mock-model] echo: cli"
        for _ in range(20):  # bounded: the heartbeat that has counted the three requests
            heartbeat = child.stdout.readline()
            if not heartbeat.startswith("proxy: ") or "3 requests" in heartbeat:
                break
        assert heartbeat.startswith("proxy: 3 requests (2 hits, 1 misses)")
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0
    assert len(err.strip().splitlines()) == 1 and err.startswith("proxy interrupted; cache committed")
    assert UPSTREAM_KEY not in banner + heartbeat + out + err
    with sqlite3.connect(cache_dir / "minima_llm.db") as db:
        assert db.execute("SELECT count(*) FROM responses").fetchone() == (1,)
    assert upstream.requests_total == 1


def test_refuses_a_public_address_without_a_token(upstream, cache_dir, monkeypatch, capsys):
    for name, value in _env(upstream, cache_dir).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MINIMA_PROXY_TOKEN", raising=False)
    assert main(["proxy", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "MINIMA_PROXY_TOKEN" in err


def test_minimallm_proxy_is_the_same_command(upstream, cache_dir, monkeypatch, capsys):
    from minima_nb.cli.proxy import main as minimallm_proxy

    monkeypatch.delenv("MINIMA_PROXY_TOKEN", raising=False)
    for name, value in _env(upstream, cache_dir).items():
        monkeypatch.setenv(name, value)
    assert minimallm_proxy(["--host", "0.0.0.0"]) == 2
    assert "without a token" in capsys.readouterr().err
    assert minimallm_proxy(["--help"]) == 0
    assert "--force-model" in capsys.readouterr().out
