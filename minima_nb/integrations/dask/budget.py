"""One global request budget for a whole Dask computation: leases of start times from the scheduler.

``rpm`` is the budget of the computation, not of each worker. :class:`BudgetPlugin`, a scheduler
plugin, keeps one GCRA schedule per budget (no burst: starts are spaced ``60 / rpm`` seconds
apart across the cluster) and answers a ``minima_nb_lease`` call with the next ``n`` start
times. :class:`LeasedPermits` is a worker's side: the engine's pacer takes every start's permit
from it (``RatePacer.share_budget``); it leases small chunks, only for requests that are
waiting, so an idle worker holds nothing and a busy one gets the whole budget (even or skewed
partitions alike). What a worker's server said travels with its next lease: a lower
``x-ratelimit-limit-requests`` lowers the global pace, an overload (429/503) pauses it.

The scheduler hosts the budget (not an actor on a worker) so that a worker dying never takes
the budget with it. If the scheduler cannot be reached, a worker falls back to an equal share
(``rpm / n_workers``) paced on its own.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from typing import Any

from ...engine.limits import RateLimitInfo
from .settings import BudgetSpec

HANDLER = "minima_nb_lease"
PLUGIN_NAME = "minima-nb-budget"
HEADROOM = 0.97  # starts are planned at 97 % of the budget: arrival jitter must not cross the limit
CHUNK = 8  # most start times leased per call
_LEASE_TIMEOUT_S = 10.0


class Schedule:
    """One budget's GCRA schedule: the next free start time, at ``rate`` starts per second."""

    def __init__(self, rpm: float, clock: Any = time.monotonic) -> None:
        self.rpm = float(rpm)
        self.server_rpm: float | None = None
        self.clock = clock
        self.next_start = -math.inf
        self.leases = 0

    def interval(self) -> float:
        """Seconds between two starts: the budget, lowered to the server's limit, with headroom."""
        rpm = min(r for r in (self.rpm, self.server_rpm) if r)
        return 60.0 / (rpm * HEADROOM)

    def lease(self, n: int, server_rpm: float | None = None, pause_s: float = 0.0) -> tuple[float, float, int]:
        """Book ``n`` starts: (delay of the first from now, interval between them, n)."""
        now = self.clock()
        if server_rpm:
            self.server_rpm = float(server_rpm)  # the latest word, as the local pacer takes it
        if pause_s > 0:
            self.next_start = max(self.next_start, now + pause_s)
        interval = self.interval()
        first = max(self.next_start, now)  # no credit for idle time: never a burst
        self.next_start = first + n * interval
        self.leases += 1
        return first - now, interval, n


def _plugin_base() -> type:
    from distributed.diagnostics.plugin import SchedulerPlugin

    return SchedulerPlugin


class BudgetPlugin(_plugin_base()):  # type: ignore[misc]
    """Scheduler plugin holding every budget's schedule; adds the ``minima_nb_lease`` handler."""

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.schedules: dict[str, Schedule] = {}

    async def start(self, scheduler: Any) -> None:
        """Register the lease handler on the scheduler."""
        scheduler.handlers[HANDLER] = self.lease

    def lease(self, budget_id: str, rpm: float, n: int, server_rpm: float | None = None,
              pause_s: float = 0.0) -> tuple[float, float, int]:
        """The scheduler's handler: book ``n`` starts of budget ``budget_id``."""
        schedule = self.schedules.get(budget_id)
        if schedule is None:
            schedule = self.schedules[budget_id] = Schedule(rpm)
        return schedule.lease(max(1, min(int(n), CHUNK)), server_rpm, pause_s)


_registered: set[str] = set()
_registered_lock = threading.Lock()


def ensure_plugin(client: Any) -> None:
    """Register :class:`BudgetPlugin` on ``client``'s scheduler once (idempotent there too)."""
    ident = str(client.scheduler.address)
    with _registered_lock:
        if ident in _registered:
            return
    client.register_plugin(BudgetPlugin())
    with _registered_lock:
        _registered.add(ident)


class LeasedPermits:
    """A worker's permits from one global budget; the engine's pacer waits on :meth:`permit`.

    ``permit`` runs on the engine's loop; the lease call runs on the worker's own event loop
    (where its connection to the scheduler lives), handed over thread-safely.
    """

    def __init__(self, spec: BudgetSpec, worker: Any, clock: Any = time.monotonic) -> None:
        self.spec = spec
        self._worker = worker
        self._clock = clock
        self._slots: deque[float] = deque()
        self._waiting = 0
        self._leasing: asyncio.Future[None] | None = None
        self._server_rpm: int | None = None
        self._pause_s = 0.0
        self._fallback_next = -math.inf
        self._interval = 0.0
        self.fallback = False
        self.leases = 0
        self.stale = 0

    # -- the pacer's side (PermitGate) --------------------------------------------------------

    async def permit(self) -> float:
        """Wait until the budget grants a start; return its earliest time (this process's clock)."""
        self._drop_stale()
        while not self._slots:
            if self.fallback:
                return self._fallback_start()
            if self._leasing is None or self._leasing.done():
                self._leasing = asyncio.ensure_future(self._lease())
            self._waiting += 1
            try:
                await asyncio.shield(self._leasing)
            finally:
                self._waiting -= 1
        return self._slots.popleft()

    def _drop_stale(self) -> None:
        # A start time more than one interval in the past was missed (this process stalled):
        # used now, it would bunch with the other workers' starts and cross the server's window.
        if not self._slots:
            return
        oldest_usable = self._clock() - self._interval
        while self._slots and self._slots[0] < oldest_usable:
            self._slots.popleft()
            self.stale += 1

    def observe(self, info: RateLimitInfo) -> None:
        """Remember the server's request limit; the next lease carries it to the budget."""
        if info.limit_requests:
            self._server_rpm = info.limit_requests

    def overloaded(self, delay_s: float) -> None:
        """Remember an overload; the next lease pauses the whole budget for ``delay_s``."""
        self._pause_s = max(self._pause_s, delay_s)

    # -- leasing ------------------------------------------------------------------------------

    async def _lease(self) -> None:
        await asyncio.sleep(0)  # let the other waiting requests count themselves first
        n = max(1, min(CHUNK, self._waiting))
        pause, self._pause_s = self._pause_s, 0.0
        sent = self._clock()
        try:
            first, interval, granted = await asyncio.wait_for(
                asyncio.wrap_future(self._call(n, pause)), _LEASE_TIMEOUT_S)
        except Exception:
            self.fallback = True  # the scheduler is gone or too slow: pace on an equal share
            return
        # The schedule was read about half a round trip after we asked.
        base = (sent + self._clock()) / 2 + first
        self._interval = interval
        self._slots.extend(base + i * interval for i in range(granted))
        self.leases += 1

    def _call(self, n: int, pause_s: float) -> Any:
        worker, spec, server_rpm = self._worker, self.spec, self._server_rpm

        async def ask() -> Any:
            return await getattr(worker.scheduler, HANDLER)(
                budget_id=spec.budget_id, rpm=spec.rpm, n=n, server_rpm=server_rpm, pause_s=pause_s)

        return asyncio.run_coroutine_threadsafe(ask(), worker.loop.asyncio_loop)

    def _fallback_start(self) -> float:
        rpm = min(r for r in (self.spec.rpm, self._server_rpm) if r)
        interval = 60.0 * max(1, self.spec.n_workers) / (rpm * HEADROOM)
        start = max(self._fallback_next, self._clock())
        self._fallback_next = start + interval
        return start


_gates: dict[tuple[str, str], LeasedPermits] = {}
_gates_lock = threading.Lock()


def permits_for(spec: BudgetSpec, worker: Any) -> LeasedPermits:
    """This process's permits for budget ``spec`` (one per budget and worker)."""
    ident = (spec.budget_id, str(getattr(worker, "address", "")))
    with _gates_lock:
        gate = _gates.get(ident)
        if gate is None:
            gate = _gates[ident] = LeasedPermits(spec, worker)
        return gate
