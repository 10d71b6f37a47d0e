"""Fixtures of the proxy tests: a mock upstream, and a caching proxy in front of it.

Every client here is a real one (openai-python, LiteLLM, DSPy, raw HTTP) talking to the proxy
over a real socket on 127.0.0.1; the proxy talks to the embedded mock server the same way.
"""

from __future__ import annotations

import pytest

from minima_nb import MinimaLlmConfig, ProxyServer
from minima_nb.testing import MockServer

# A distinctive fake upstream key: the key scan looks for it in everything a client sees.
UPSTREAM_KEY = "sk-proxytest-UPSTREAMKEY-7f3a9c2e"


def upstream_config(upstream: MockServer, cache_dir, **settings) -> MinimaLlmConfig:
    """A config for ``upstream`` with the fake key, a cache in ``cache_dir`` and no pacing."""
    values = {"rpm": 0, "api_key": UPSTREAM_KEY, "cache_dir": str(cache_dir), **settings}
    return MinimaLlmConfig(base_url=upstream.base_url, model="mock-model", **values)


@pytest.fixture
def upstream():
    """The mock upstream; it requires the configured key, as a real provider does."""
    with MockServer(require_api_key=UPSTREAM_KEY) as server:
        yield server


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def proxy(upstream, cache_dir):
    """A proxy on a free loopback port in front of ``upstream``, with a cache."""
    with ProxyServer(upstream_config(upstream, cache_dir), port=0) as server:
        yield server


@pytest.fixture
def loopback_only(monkeypatch):
    """Fail any connection or name lookup beyond 127.0.0.1 (LiteLLM and DSPy like to phone home)."""
    import socket

    real_connect, real_connect_ex, real_getaddrinfo = (
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo)

    def check(address: object) -> None:
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "localhost"):
            raise OSError(f"test guard: connection to {address!r} refused (loopback only)")

    def connect(self, address):
        check(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        check((host,))
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
