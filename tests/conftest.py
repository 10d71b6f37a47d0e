"""Fixtures shared by the test modules: the embedded mock server and a cached backend on it.

A module that needs a differently configured server (an API key, a body limit, a long
timeout fault) defines its own ``srv``, which takes precedence over this one.
"""

from __future__ import annotations

import os

import pytest
from _mock_backend import close_backend, make_backend

from minima_nb.testing import MockServer

# The suite reaches nothing but 127.0.0.1: LiteLLM (imported by the proxy and DSPy tests) would
# otherwise fetch its model-cost map from GitHub at import time, in every process it runs in.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture
def srv():
    """A plain MockServer on 127.0.0.1, stopped after the test."""
    with MockServer() as server:
        yield server


@pytest.fixture
def backend(srv, tmp_path):
    """A backend on ``srv`` with a cache under ``tmp_path``, closed after the test."""
    llm = make_backend(srv, tmp_path / "cache")
    yield llm
    close_backend(llm)
