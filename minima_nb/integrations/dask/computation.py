"""``compute(...)`` and ``progress()``: conveniences over the live view of a plain ``.compute()``.

A plain ``answers.compute()`` shows its own bar already (:mod:`.live`). These two are for
choosing what is shown: ``minima_nb.dask.compute(a, b, progress="text")`` computes several
collections with ONE bar of rows for all of them (a widget in a notebook, a heartbeat line
elsewhere, nothing with ``progress=False``), drawn on the caller's thread while it waits in
short polls, and Ctrl-C cancels the computation (answers already received are in the cache).
``with minima_nb.dask.progress(...) as view:`` does the same around any computation in the
block and leaves the counts in ``view.totals()``. While either runs, the automatic views
stay closed.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import live
from .progress import ClusterProgress

_POLL_S = 0.1
_SETTLE_S = 2.0  # how long the final events may trail the results


def _client(client: Any) -> Any:
    if client is not None:
        return client
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def _settle(view: ClusterProgress) -> None:
    """Wait (briefly, bounded) for the last partitions' final events to arrive."""
    deadline = time.monotonic() + _SETTLE_S
    while time.monotonic() < deadline and view.running():
        time.sleep(0.02)


def compute(*collections: Any, progress: Any = True, client: Any = None) -> Any:
    """Compute Dask collections with one bar of rows for all of them; like ``dask.compute``.

    Returns the computed value of one collection, or a tuple for several.
    """
    client = _client(client)
    view = ClusterProgress(progress)
    hub = live.hub()
    hub.attach(client)
    status = "error"
    with hub.observe(view):
        try:
            if client is None:
                results = _threaded(collections, view)
            else:
                results = _distributed(client, collections, view)
            _settle(view)
            status = "done"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            view.close(status)
    return results[0] if len(collections) == 1 else tuple(results)


def _distributed(client: Any, collections: tuple[Any, ...], view: ClusterProgress) -> list[Any]:
    import asyncio

    from distributed import wait

    futures = client.compute(list(collections))
    try:
        while True:
            try:
                wait(futures, timeout=_POLL_S)  # short waits: Ctrl-C is seen, the bar drawn
                break
            except (TimeoutError, asyncio.TimeoutError):
                view.draw()
        results: list[Any] = client.gather(futures)
        return results
    except BaseException:
        client.cancel(futures)
        raise


def _threaded(collections: tuple[Any, ...], view: ClusterProgress) -> list[Any]:
    import dask

    box: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        try:
            box.set_result(list(dask.compute(*collections, scheduler="threads")))
        except BaseException as exc:
            box.set_exception(exc)

    threading.Thread(target=run, name="minima-dask-compute", daemon=True).start()
    while not concurrent.futures.wait([box], timeout=_POLL_S).done:
        view.draw()
    result: list[Any] = box.result()
    return result


@contextmanager
def progress(progress: Any = True, *, client: Any = None) -> Iterator[ClusterProgress]:
    """One bar for every computation in the block; its counts stay in ``view.totals()``."""
    view = ClusterProgress(progress)
    stop = threading.Event()

    def draw() -> None:
        while not stop.wait(_POLL_S):
            view.draw()

    hub = live.hub()
    hub.attach(_client(client))
    drawer = threading.Thread(target=draw, name="minima-dask-progress-block", daemon=True)
    status = "error"
    with hub.observe(view):
        drawer.start()
        try:
            yield view
            _settle(view)
            status = "done"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            stop.set()
            drawer.join(timeout=1.0)
            view.close(status)
