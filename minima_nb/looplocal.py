"""Per-event-loop storage: one object (an HTTP session, a semaphore) for each loop that asks.

asyncio objects are bound to the loop they were first used on. A backend must work from
several loops one after another (``asyncio.run`` twice, a script then the notebook bridge), so
everything loop-bound is created lazily, on the loop that uses it, through a :class:`LoopLocal`.
Entries of loops that have since closed are dropped (and disposed of) the next time any loop asks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LoopLocal(Generic[T]):
    """Lazily create one ``T`` per running event loop with ``factory()``.

    ``dispose(obj)`` is called, synchronously, for objects whose loop has closed; it must not
    need that loop (it is gone).
    """

    def __init__(self, factory: Callable[[], T], dispose: Callable[[T], None] | None = None) -> None:
        self._factory = factory
        self._dispose = dispose
        self._items: dict[asyncio.AbstractEventLoop, T] = {}

    def get(self) -> T:
        """The object for the running loop, created on first use. Must be called inside a loop."""
        loop = asyncio.get_running_loop()
        item = self._items.get(loop)
        if item is None:
            self._prune_closed()
            item = self._items[loop] = self._factory()
        return item

    def pop_current(self) -> T | None:
        """Remove and return the running loop's object (for ``aclose``), or ``None``."""
        self._prune_closed()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return self._items.pop(loop, None)

    def peek_current(self) -> T | None:
        """The running loop's object if one was created, without creating it."""
        try:
            return self._items.get(asyncio.get_running_loop())
        except RuntimeError:
            return None

    def _prune_closed(self) -> None:
        for loop in [lp for lp in self._items if lp.is_closed()]:
            item = self._items.pop(loop)
            if self._dispose is not None:
                self._dispose(item)

    def __len__(self) -> int:
        return len(self._items)
