"""``compute(...)`` and ``progress()``: a Dask computation with minima_nb's bar over the whole cluster.

``minima_nb.dask.compute(answers)`` subscribes to the workers' progress events, computes on the
client, and draws the bar (a widget in a notebook, a heartbeat line elsewhere) on the caller's
thread while it waits in short polls; Ctrl-C cancels the computation (answers already received
are in the cache). ``with minima_nb.dask.progress():`` does the same around a plain
``.compute()``, drawing from a helper thread. Without a distributed client, both run on the
threaded scheduler and count the in-process events.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .progress import ClusterProgress, Subscription

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
    while time.monotonic() < deadline:
        totals = view.totals()
        if totals["done"] >= totals["total"]:
            return
        time.sleep(0.02)


def compute(*collections: Any, progress: Any = True, client: Any = None) -> Any:
    """Compute Dask collections with one bar of rows across the cluster; like ``dask.compute``.

    Returns the computed value of one collection, or a tuple for several.
    """
    client = _client(client)
    view = ClusterProgress(progress)
    status = "error"
    with Subscription(view, client):
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
    """Show the cluster-wide bar around any computation in the block (e.g. ``.compute()``)."""
    view = ClusterProgress(progress)
    stop = threading.Event()

    def draw() -> None:
        while not stop.wait(_POLL_S):
            view.draw()

    drawer = threading.Thread(target=draw, name="minima-dask-progress", daemon=True)
    status = "error"
    with Subscription(view, _client(client)):
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
