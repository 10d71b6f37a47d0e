"""The live view of a plain ``.compute()``: one widget (or heartbeat line) per computation.

``ddf.minima.generate(...)`` registers its computation's token here and subscribes this
process, once per distributed client, to the workers' progress events
(``Client.subscribe_topic``); partitions run by a local scheduler publish in-process. Nothing
else is needed: ``answers.compute()``, ``dask.compute(answers)``, ``client.compute(answers)``
and ``.persist()`` all run the partitions, and their first event opens the view.

Where the widget lands: event handlers run on the client's event-loop thread, whose context
(and so ipykernel's parent header) is the one of the cell that created the ``Client``. The
hub therefore keeps the context of the cell being executed (IPython's ``pre_run_cell``
event) and draws every view inside a copy of it, so the widget's display and updates belong to
the cell that runs ``.compute()`` (or, for a ``persist()`` finishing in the background, to the
last cell run).

When it closes: as soon as every partition of the computation has sent its final counts (they
arrive before the result does), when the cell that opened it ends (with the cell's outcome:
done, interrupted or error; a ``persist()`` still running is left open), when a local
scheduler's computation ends (a dask ``Callback``), or after ``IDLE_CLOSE_S`` without events
with nothing running (a partial computation such as ``head()`` in a script). While a view is
open, a new attempt of a partition it counted already (Dask re-running it after a worker
died) is ignored; events of an attempt whose view has closed are dropped, so nothing is
counted twice or reopened.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ...types import BatchSnapshot
from .progress import TOPIC, ClusterProgress, add_local_handler

IDLE_CLOSE_S = 15.0
DRAW_INTERVAL_S = 0.1
_MAX_TOKENS = 1000
_MAX_CLOSED_ATTEMPTS = 20000


@dataclass(frozen=True)
class Display:
    """How one ``generate()`` call's computations are shown (kept here, not in the graph)."""

    progress: bool | str
    label: str
    npartitions: int | None
    heartbeat_s: float = 10.0
    stall_s: float = 300.0


@dataclass
class _Cell:
    context: contextvars.Context
    running: bool = True
    status: str = "done"  # how the cell ended


class _Live:
    """One open view: its counts, the cell it belongs to, the attempts it has seen."""

    def __init__(self, token: str, display: Display, cell: _Cell | None, local: bool) -> None:
        self.token = token
        self.cell = cell
        self.local = local
        self.attempts: set[str] = set()
        self.view = ClusterProgress(display.progress, label=display.label,
                                    expected=display.npartitions,
                                    heartbeat_s=display.heartbeat_s, stall_s=display.stall_s)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in the cell's context (a fresh copy: several threads draw)."""
        if self.cell is None:
            return fn(*args)
        return self.cell.context.copy().run(fn, *args)


class Hub:
    """This process's views of the computations ``generate()`` built (one per token)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._displays: OrderedDict[str, Display] = OrderedDict()
        self._open: dict[str, _Live] = {}
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._observers: list[ClusterProgress] = []
        self._clients: set[str] = set()
        self._cell: _Cell | None = None
        self._last_cell: _Cell | None = None
        self._local_depth = 0
        self._drawer: threading.Thread | None = None
        self._hooked = False
        self.history: deque[tuple[str, str, BatchSnapshot]] = deque(maxlen=32)

    # -- set-up, from generate() ---------------------------------------------------------
    def register(self, token: str, display: Display, client: Any) -> None:
        """Show computations of ``token`` as ``display`` says; listen to ``client``'s workers."""
        with self._lock:
            self._displays[token] = display
            self._displays.move_to_end(token)
            while len(self._displays) > _MAX_TOKENS:
                self._displays.popitem(last=False)
        self._install()
        self.attach(client)

    def attach(self, client: Any) -> None:
        """Subscribe to ``client``'s progress topic (once per client)."""
        ident = getattr(client, "id", None)
        if client is None or ident is None:
            return
        with self._lock:
            if ident in self._clients:
                return
            self._clients.add(ident)
        client.subscribe_topic(TOPIC, self._on_event)

    def _install(self) -> None:
        with self._lock:
            if self._hooked:
                return
            self._hooked = True
        add_local_handler(self._on_local)
        _LocalRuns(self).register()
        shell = _ipython()
        if shell is not None:
            shell.events.register("pre_run_cell", self._pre_run_cell)
            shell.events.register("post_run_cell", self._post_run_cell)

    # -- events -------------------------------------------------------------------------
    def _on_event(self, event: tuple[float, Any]) -> None:
        self.handle(event[1])

    def _on_local(self, message: dict[str, Any]) -> None:
        self.handle(message, local=True)

    def handle(self, message: Any, *, local: bool = False) -> None:
        """One partition event, from any thread: count it in its computation's view.

        ``local`` marks events of partitions run in this process by a local scheduler: their
        view closes when that scheduler's computation ends.
        """
        if not isinstance(message, dict) or "attempt" not in message:
            return
        token = message.get("token")
        with self._lock:
            observers = list(self._observers)
            display = self._displays.get(token) if isinstance(token, str) else None
        for observer in observers:
            observer.handle(message)
        if observers or display is None or token is None:
            return  # a progress() block shows its own bar; unknown tokens are not ours
        with self._lock:
            if message["attempt"] in self._closed:
                return  # a view that has closed (interrupted, or done) stays closed
            live = self._open.get(token)
            if live is not None and live.view.is_rerun(message):
                return  # Dask re-ran a finished partition: its rows are counted already
            if live is None:
                cell = self._current_cell()
                if cell is not None and not cell.running and cell.status != "done":
                    # A partition starting just after its cell was interrupted (the cluster had
                    # not yet cancelled it): no new bar under the interrupted cell.
                    self._closed[message["attempt"]] = None
                    return
                live = self._open[token] = _Live(token, display, cell, local)
            live.attempts.add(message["attempt"])
            live.view.handle(message)
            done = live.view.complete()
            if done:
                del self._open[token]
                self._forget(live)
        if done:
            self._finish(live, "done")
        else:
            live.call(live.view.draw)  # the first event shows the widget at once
            self._ensure_drawer()

    def _current_cell(self) -> _Cell | None:
        return self._cell if self._cell is not None else self._last_cell

    def _forget(self, live: _Live) -> None:
        """Remember ``live``'s attempts as closed (their late events are dropped)."""
        for attempt in live.attempts:
            self._closed[attempt] = None
        while len(self._closed) > _MAX_CLOSED_ATTEMPTS:
            self._closed.popitem(last=False)

    def _finish(self, live: _Live, status: str) -> None:
        final = live.call(live.view.close, status)
        self.history.append((live.token, status, final))

    def close_where(self, status: str, which: Callable[[_Live], bool]) -> None:
        """Close the open views ``which`` selects, with ``status``."""
        with self._lock:
            chosen = [live for live in self._open.values() if which(live)]
            for live in chosen:
                del self._open[live.token]
                self._forget(live)
        for live in chosen:
            self._finish(live, status)

    # -- drawing ------------------------------------------------------------------------
    def _ensure_drawer(self) -> None:
        with self._lock:
            if self._drawer is not None and self._drawer.is_alive():
                return
            self._drawer = threading.Thread(target=self._draw_loop, name="minima-dask-progress",
                                            daemon=True)
            self._drawer.start()

    def _draw_loop(self) -> None:
        while True:
            time.sleep(DRAW_INTERVAL_S)
            with self._lock:
                views = list(self._open.values())
                if not views:
                    self._drawer = None
                    return
            for live in views:
                live.call(live.view.draw)
            since = time.monotonic() - IDLE_CLOSE_S

            def idle(live: _Live, since: float = since) -> bool:
                return not live.view.running() and live.view.last_event_at < since

            self.close_where("done", idle)

    # -- where and when: cells, local computations, progress() blocks ---------------------
    def _pre_run_cell(self, info: Any = None) -> None:
        cell = _Cell(contextvars.copy_context())
        with self._lock:
            self._cell = cell
        _attach_default_client(self)

    def _post_run_cell(self, result: Any = None) -> None:
        with self._lock:
            cell, self._cell = self._cell, None
            if cell is not None:
                cell.running = False
                self._last_cell = cell
        if cell is None:
            return
        status = cell.status = _status_of(result)
        if status != "done":
            self.close_where(status, lambda live: live.cell is cell)
        else:  # a persist() still running in the background keeps its view
            self.close_where("done", lambda live: live.cell is cell and not live.view.running())

    def local_started(self) -> None:
        """A local scheduler's computation starts (on the thread that computes)."""
        with self._lock:
            self._local_depth += 1

    def local_finished(self, errored: bool) -> None:
        """It ended: close the views its partitions opened."""
        with self._lock:
            self._local_depth = max(0, self._local_depth - 1)
            if self._local_depth:
                return
        exc = sys.exc_info()[1]
        status = ("interrupted" if isinstance(exc, KeyboardInterrupt) else "error") if errored else "done"
        self.close_where(status, lambda live: live.local)

    @contextmanager
    def observe(self, view: ClusterProgress) -> Iterator[ClusterProgress]:
        """Feed every event to ``view`` while the block runs (no automatic views meanwhile)."""
        with self._lock:
            self._observers.append(view)
        try:
            yield view
        finally:
            with self._lock:
                self._observers.remove(view)


def _status_of(result: Any) -> str:
    error = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
    if error is None:
        return "done"
    return "interrupted" if isinstance(error, KeyboardInterrupt) else "error"


def _ipython() -> Any:
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    try:
        return get_ipython() if get_ipython is not None else None
    except Exception:
        return None


def _attach_default_client(hub: Hub) -> None:
    """A Client made after generate() still gets its events (checked as each cell starts)."""
    if "distributed" not in sys.modules:
        return
    try:
        from distributed import default_client

        hub.attach(default_client())
    except ValueError:  # no client
        pass


def _local_runs_base() -> type:
    from dask.callbacks import Callback

    return Callback


class _LocalRuns(_local_runs_base()):  # type: ignore[misc]
    """A dask callback: when a local scheduler's computation starts and ends."""

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self._hub = hub

    def _start(self, dsk: Any) -> None:
        self._hub.local_started()

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        self._hub.local_finished(errored)


_hub_lock = threading.Lock()
_hub: Hub | None = None


def hub() -> Hub:
    """This process's hub (made on first use)."""
    global _hub
    with _hub_lock:
        if _hub is None:
            _hub = Hub()
        return _hub


def last_progress() -> BatchSnapshot | None:
    """The final counts of the most recent computation's view (None before the first)."""
    history = hub().history
    return history[-1][2] if history else None
