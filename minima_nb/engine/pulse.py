"""``BackendPulse``: a backend's running totals since it was made or last reset (minima-llm's names).

A batch has its own live counts (:class:`~minima_nb.types.BatchSnapshot`, per run); the pulse
is the backend's tally across runs, which minima-llm's users read with ``backend.get_pulse()``
after a job: cache hits, calls that reached the server, billed tokens, latency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class BackendPulse:
    """Counts of one backend since it was made or :meth:`reset_pulse` was called.

    ``cache_hits`` counts answers served from the cache (``cache_hits_synonym`` and
    ``cache_hits_lookup`` the subsets found under a model synonym or in a lookup cache);
    ``llm_calls`` answers that came from the server; tokens are those the server billed.
    """

    cache_hits: int = 0
    llm_calls: int = 0
    cache_hits_synonym: int = 0
    cache_hits_lookup: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_latency_s: float = 0.0
    min_latency_s: float = math.inf
    max_latency_s: float = 0.0

    @property
    def done(self) -> int:
        """Answers given: cache hits plus server calls."""
        return self.cache_hits + self.llm_calls

    @property
    def avg_latency_s(self) -> float:
        """Mean latency of the server calls, 0.0 before the first."""
        return self.total_latency_s / self.llm_calls if self.llm_calls else 0.0

    def record_call(self, input_tokens: int | None, output_tokens: int | None, latency_s: float) -> None:
        """Count one answer from the server."""
        self.llm_calls += 1
        self.input_tokens += input_tokens or 0
        self.output_tokens += output_tokens or 0
        self.total_latency_s += latency_s
        self.min_latency_s = min(self.min_latency_s, latency_s)
        self.max_latency_s = max(self.max_latency_s, latency_s)

    def record_hits(self, count: int = 1, source: str | None = None) -> None:
        """Count ``count`` answers served from the cache (``source`` as in ``cache_source``)."""
        self.cache_hits += count
        if source and "synonym:" in source:
            self.cache_hits_synonym += count
        if source and source.startswith("lookup:"):
            self.cache_hits_lookup += count


BackendStats = BackendPulse  # minima-llm's earlier name
