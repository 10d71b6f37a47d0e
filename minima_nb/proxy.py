"""The caching proxy (public face): ``from minima_nb.proxy import ProxyServer``.

Its code lives in ``minima_nb.servers.proxy``; ``minima-nb proxy`` runs it from the shell.
"""

from .servers.proxy import ProxyServer
from .servers.proxy.server import is_loopback

__all__ = ["ProxyServer", "is_loopback"]
