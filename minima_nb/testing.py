"""The embedded OpenAI-compatible mock server (public: ``minima_nb.testing.MockServer``).

The demo, the notebooks, the tests and the benchmarks all use it; its code lives in
``minima_nb.servers.mock``.
"""

from .servers.mock.server import (
    FAULT_KINDS,
    MOCK_MODELS,
    MockServer,
    count_tokens,
    mock_answer,
    openai_duration,
)

__all__ = ["FAULT_KINDS", "MOCK_MODELS", "MockServer", "count_tokens", "mock_answer", "openai_duration"]
