"""Per-event-loop storage: one object (an HTTP session, a semaphore) for each loop that asks.

asyncio objects are bound to the loop they were first used on. A backend must work from
several loops one after another (``asyncio.run`` twice, a script then the notebook bridge), so
everything loop-bound is created lazily, on the loop that uses it, through a :class:`LoopLocal`.
Entries of loops that have since closed are dropped (and disposed of) the next time any loop asks.

Objects that need an async close (HTTP pools) are closed when their loop shuts down, even if the
user never called ``aclose()``: :meth:`LoopLocal.aget` starts a one-step async generator on the
loop, and ``asyncio.run`` (like any orderly shutdown) finalizes live async generators through
``loop.shutdown_asyncgens()`` before closing the loop; the generator's ``finally`` closes the object.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class LoopLocal(Generic[T]):
    """Lazily create one ``T`` per running event loop with ``factory()``.

    ``dispose(obj)`` is called, synchronously, for objects whose loop has closed; it must not
    need that loop (it is gone).
    """

    def __init__(
        self,
        factory: Callable[[], T],
        dispose: Callable[[T], None] | None = None,
        aclose: Callable[[T], Coroutine[Any, Any, Any]] | None = None,
    ) -> None:
        self._factory = factory
        self._dispose = dispose
        self._aclose = aclose
        self._items: dict[asyncio.AbstractEventLoop, T] = {}
        self._guards: dict[asyncio.AbstractEventLoop, AsyncIterator[None]] = {}

    async def aget(self) -> T:
        """Like :meth:`get`, and arrange for ``aclose(obj)`` when the loop shuts down."""
        loop = asyncio.get_running_loop()
        item = self._items.get(loop)
        if item is None:
            item = self.get()
            if self._aclose is not None:
                guard = self._guards[loop] = _close_at_shutdown(self._aclose, item)
                await guard.__anext__()  # first iteration registers it with this loop
        return item

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
        self._guards.pop(loop, None)  # its aclose would close the object a second time
        return self._items.pop(loop, None)

    def peek_current(self) -> T | None:
        """The running loop's object if one was created, without creating it."""
        try:
            return self._items.get(asyncio.get_running_loop())
        except RuntimeError:
            return None

    def release_all(self) -> None:
        """Close every object now or soon, each on its own loop; for an owner that is going away.

        An object whose loop still runs is closed by a task on that loop (the task keeps it alive
        until then); one whose loop is stopped or closed is disposed of synchronously.
        """
        items, self._items, self._guards = list(self._items.items()), {}, {}
        for loop, item in items:
            if self._aclose is not None and loop.is_running() and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(_start_close, loop, self._aclose, item)
                    continue
                except RuntimeError:  # closed in the meantime
                    pass
            if self._dispose is not None:
                self._dispose(item)

    def _prune_closed(self) -> None:
        for loop in [lp for lp in self._items if lp.is_closed()]:
            self._guards.pop(loop, None)
            item = self._items.pop(loop)
            if self._dispose is not None:
                self._dispose(item)

    def __len__(self) -> int:
        return len(self._items)


_CLOSING: set[asyncio.Task[Any]] = set()  # strong references until each close has finished


def _start_close(
    loop: asyncio.AbstractEventLoop, aclose: Callable[[Any], Coroutine[Any, Any, Any]], item: Any
) -> None:
    task = loop.create_task(aclose(item))
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


async def _close_at_shutdown(
    aclose: Callable[[Any], Coroutine[Any, Any, Any]], item: Any
) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await aclose(item)
