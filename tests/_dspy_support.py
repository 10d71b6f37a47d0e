"""What the DSPy tests share: signatures, a loopback-only socket guard, an LM on the mock server.

The guard refuses (and records) every connection or DNS lookup that is not 127.0.0.1 / localhost,
so a DSPy or LiteLLM call home (model metadata, the model-cost map) fails the test instead of
silently reaching the network. ``GUARD_SITE`` is the same guard as a ``sitecustomize`` module for
subprocesses.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before anything imports litellm

import dspy  # noqa: E402

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class QA(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


class Judge(dspy.Signature):
    """Judge whether the answer is correct and score it."""

    question: str = dspy.InputField()
    answer: str = dspy.InputField()
    verdict: Literal["correct", "incorrect"] = dspy.OutputField()
    score: float = dspy.OutputField()


def _host(address) -> str:
    return str(address[0]) if isinstance(address, tuple) else str(address)


@contextmanager
def loopback_only():
    """Refuse every non-loopback connect/getaddrinfo in this process; yields the refused hosts."""
    refused: list[str] = []
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(host: str) -> None:
        if host not in LOOPBACK and not host.startswith("/"):
            refused.append(host)
            raise OSError(f"test network guard: {host} is not loopback")

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            check(_host(address))
        return connect(self, address)

    def guarded_connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            check(_host(address))
        return connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        check(str(host))
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex = guarded_connect, guarded_connect_ex
    socket.getaddrinfo = guarded_getaddrinfo
    try:
        yield refused
    finally:
        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
        socket.getaddrinfo = getaddrinfo


GUARD_SITE = '''
import os, socket
_log = os.environ["MINIMA_TEST_NET_LOG"]
_ok = {"127.0.0.1", "localhost", "::1"}
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo
def _check(host):
    if host not in _ok:
        with open(_log, "a") as f:
            f.write(host + "\\n")
        raise OSError("test network guard: %s is not loopback" % host)
def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _check(str(address[0]))
    return _connect(self, address)
def _guarded_getaddrinfo(host, *args, **kwargs):
    _check(str(host))
    return _getaddrinfo(host, *args, **kwargs)
socket.socket.connect = _guarded_connect
socket.getaddrinfo = _guarded_getaddrinfo
'''


def guarded_subprocess_env(tmp_path: Path, **extra: str) -> tuple[dict[str, str], Path]:
    """Environment for a subprocess with the socket guard, a fresh HOME and no DSPY_CACHEDIR."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(GUARD_SITE)
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "net.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DSPY_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               HOME=str(home), MINIMA_TEST_NET_LOG=str(log), **extra)
    return env, home
