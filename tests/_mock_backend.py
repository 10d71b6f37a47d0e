"""A backend on the embedded mock server for the accessor and lookup tests, and how to close it."""

from __future__ import annotations

from minima_nb.config import MinimaLlmConfig
from minima_nb.engine.backend import OpenAIMinimaLlm
from minima_nb.engine.sync import run_sync


def make_backend(srv, cache_dir, **settings) -> OpenAIMinimaLlm:
    """A backend on ``srv`` (model "mock-model", no pacing); no cache when ``cache_dir`` is None."""
    if cache_dir is not None:
        settings["cache_dir"] = str(cache_dir)
    config = MinimaLlmConfig(base_url=srv.base_url, model="mock-model", rpm=0, **settings)
    return OpenAIMinimaLlm(config)


def close_backend(llm: OpenAIMinimaLlm) -> None:
    """Close the HTTP pool on minima_nb's private loop, then the cache."""
    run_sync(llm.aclose())
    llm.close()
