"""The caching proxy: any OpenAI client through one cache and one pace (public: ``minima_nb.proxy``).

:mod:`.server` runs it (``ProxyServer``), :mod:`.app` is its HTTP face, :mod:`.translate` its
wire format, :mod:`.relay` its one road upstream and :mod:`.metrics` its counters.
"""

from .server import ProxyServer

__all__ = ["ProxyServer"]
