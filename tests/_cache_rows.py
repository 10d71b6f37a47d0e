"""Cache rows for the export tests: one answered prompt per key, written with the real PromptCache."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from minima_nb.cache import CacheRow, PromptCache

T0 = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc).timestamp()


def row(key, *, model="m1", namespace=None, text=None, created_at=T0, **fields) -> CacheRow:
    """The answer stored for prompt ``key`` (its text "answer <key>" unless given)."""
    return CacheRow(key, namespace, model, [{"role": "user", "content": key}], {"temperature": 0},
                    text if text is not None else f"answer {key}", created_at=created_at, **fields)


def fill(directory: Path, rows) -> None:
    """Store ``rows`` in the cache at ``directory`` and commit them."""
    with PromptCache(directory) as cache:
        for r in rows:
            cache.put(r)
