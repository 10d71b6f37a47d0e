"""Keep benchmark clients on the loopback interface.

Some peers reach for the internet on their own (litellm can fetch a model-cost map when it is
imported). The benchmark must talk to 127.0.0.1 only, so every client process calls
:func:`install` before importing any peer: name lookups and socket connects to anything other
than a loopback address raise ``OSError``, and each refused attempt is counted so the results
can show that none happened (or that one was stopped).
"""

from __future__ import annotations

import ipaddress
import os
import socket

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}
blocked: list[str] = []
_installed = False

# Proxies would route 127.0.0.1 traffic elsewhere, and a proxy URL is itself a remote host.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                   "all_proxy")


def _is_loopback(host: object) -> bool:
    if host is None:
        return True  # bind/listen on any address of the local machine
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    text = str(host).strip("[]").lower()
    if text in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def _refuse(what: str) -> OSError:
    blocked.append(what)
    return OSError(f"benchmarks.netguard: network access to {what!r} is not allowed (127.0.0.1 only)")


def install() -> None:
    """Refuse every DNS lookup and connect that is not for a loopback address (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    for name in PROXY_VARIABLES:
        os.environ.pop(name, None)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host):
            raise _refuse(str(host))
        return real_getaddrinfo(host, *args, **kwargs)

    def check(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
            if not _is_loopback(address[0]):
                raise _refuse(str(address[0]))

    def connect(self, address):
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(self, address)
        return real_connect_ex(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
