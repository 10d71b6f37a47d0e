"""The transports by name: which one a config's ``transport`` builds.

``"auto"`` (the default) is the http1 transport (:mod:`.http1`) when httptools is installed,
aiohttp's otherwise; ``"http1"``, ``"aiohttp"`` and ``"httpx"`` name one; a user's own
``httpx.AsyncClient`` picks httpx. Kept apart from :mod:`.transport` because the http1
transport builds on that module's base class.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ..errors import ConfigError
from .http1 import Http1Transport
from .transport import AiohttpTransport, HttpxTransport, Transport


def make_transport(kind: str = "auto", *, client: Any = None, compress_gzip: bool = False) -> Transport:
    """Build the transport named ``kind``; an ``httpx.AsyncClient`` passed as ``client`` selects httpx.

    ``"auto"`` is the http1 transport when httptools is installed, else aiohttp.
    """
    if client is not None:
        if type(client).__module__.split(".")[0] != "httpx":
            raise ConfigError(
                f"client={type(client).__name__} is not supported; pass an httpx.AsyncClient or leave it out."
            )
        return HttpxTransport(client=client, compress_gzip=compress_gzip)
    if kind == "auto":
        kind = "http1" if http1_available() else "aiohttp"
    if kind == "http1":
        if not http1_available():
            raise ConfigError("transport='http1' needs httptools: pip install 'minima-nb[fast]' "
                              "(or set transport='aiohttp').")
        return Http1Transport(compress_gzip=compress_gzip)
    if kind == "aiohttp":
        return AiohttpTransport(compress_gzip=compress_gzip)
    if kind == "httpx":
        return HttpxTransport(compress_gzip=compress_gzip)
    raise ConfigError(f"transport={kind!r} is unknown; use 'auto', 'http1', 'aiohttp' or 'httpx'.")


def http1_available() -> bool:
    """Whether httptools (the `fast` extra) is installed, so the http1 transport can run."""
    return importlib.util.find_spec("httptools") is not None
