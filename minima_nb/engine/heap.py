"""The heap during a large batch: what the batch's inputs cost Python's cyclic garbage collector.

A batch of a million rows keeps a few objects per row alive from before it starts until it
ends (the caller's prompts, the message lists, the requests, the cache keys), and the cyclic
collector's full collections walk every one of them each time: measured on a 1,000,000-row
first pass, 9 full collections took 28 s of its 143 s of CPU. Those objects are long-lived by
construction, so :func:`long_lived_frozen` moves everything alive when a large batch starts
into the collector's permanent generation (``gc.freeze``) for the batch's duration: young
objects are still collected as usual (nothing the batch makes in a cycle piles up), only the
walk over the old heap is skipped. ``gc.unfreeze`` returns them at the end.

Small batches are left alone (the walk is cheap there), and so is a process that froze objects
itself (a pre-forking server): its freeze is its own and is not undone here.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: From this many rows on a batch freezes the heap it starts with.
FREEZE_FROM_ROWS = 10_000


@contextlib.contextmanager
def long_lived_frozen(rows: int) -> Iterator[bool]:
    """Freeze what is alive now for the block when ``rows`` is large; yields whether it did."""
    if rows < FREEZE_FROM_ROWS or gc.get_freeze_count() or not gc.isenabled():
        yield False
        return
    gc.freeze()
    try:
        yield True
    finally:
        gc.unfreeze()
