"""The heap during a large batch: what its rows cost Python's cyclic garbage collector.

A batch of a million rows keeps a few objects per row alive until it ends (the caller's message
lists, the requests, then a result per row), and each of the collector's full collections walks
all of them: every time the heap grows by a quarter, so a dozen walks over millions of objects
in one batch, each one a pause of the loop thread with every request waiting on it (about 0.4 s
per 3 million objects here). :func:`young_collections_only` turns the automatic collector off
for a large batch and collects the young generations itself, from the batch's progress ticker
(:func:`collect_young`, every 0.2 s): garbage in cycles that the batch makes is still freed
within a tick, only the walks over the long-lived heap wait until the batch is over, when the
collector is turned back on.

Small batches are left alone (the walks are cheap there), and so is a process that turned the
collector off itself: it is not turned on behind its back.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: From this many rows on a batch runs with young collections only.
YOUNG_ONLY_FROM_ROWS = 10_000


@contextlib.contextmanager
def young_collections_only(rows: int) -> Iterator[bool]:
    """Automatic collection off for the block when ``rows`` is large; yields whether it did.

    While it is off, :func:`collect_young` must be called now and then (the pool's ticker does).
    """
    if rows < YOUNG_ONLY_FROM_ROWS or not gc.isenabled():
        yield False
        return
    gc.disable()
    try:
        yield True
    finally:
        gc.enable()


def collect_young() -> None:
    """Collect the two young generations (what was allocated lately), not the old heap."""
    gc.collect(1)
