"""Rows across the cluster: partitions report their counts as events, summed into one view.

On a worker, :class:`PartitionReporter` is the progress sink of a partition's batch: it keeps
the batch's newest snapshot and, from the task thread's poll (about every 0.1 s, at most every
``REPORT_INTERVAL_S``), sends the partition's *cumulative* counts as a Dask event
(``Worker.log_event``). Each event names the computation's token (carried in the graph by the
run's spec), the partition's number and the attempt (a partition Dask re-runs after a worker
died is a new attempt). Without a distributed worker (the threaded scheduler) the events go
to an in-process hub instead.

In the notebook, :class:`ClusterProgress` keeps the newest attempt of every partition (a
re-run replaces an unfinished attempt; a finished partition is final, so rows are never
counted twice) and sums them into one :class:`BatchSnapshot` for the same widget bar or
heartbeat line as the pandas accessor's. Until every partition has started, the total is
estimated from the partitions seen so far. :mod:`.live` decides when a view opens and closes.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from ...engine.progress import make_sink
from ...types import BatchSnapshot

TOPIC = "minima-nb-progress"
REPORT_INTERVAL_S = 0.25
COUNTS = ("total", "done", "cached", "failed", "retrying", "in_flight", "sent", "received",
          "input_tokens", "output_tokens")
_RATE_WINDOW_S = 30.0

# In-process subscribers, for partitions that run without a distributed worker.
_local_lock = threading.Lock()
_local_handlers: list[Callable[[dict[str, Any]], None]] = []


def add_local_handler(handler: Callable[[dict[str, Any]], None]) -> None:
    """Receive the events of partitions run in this process without a worker."""
    with _local_lock:
        if handler not in _local_handlers:
            _local_handlers.append(handler)


def remove_local_handler(handler: Callable[[dict[str, Any]], None]) -> None:
    """Stop receiving in-process events."""
    with _local_lock:
        if handler in _local_handlers:
            _local_handlers.remove(handler)


def _publish_local(message: dict[str, Any]) -> None:
    with _local_lock:
        handlers = list(_local_handlers)
    for handler in handlers:
        handler(message)


class PartitionReporter:
    """The progress sink of one partition's batch: cumulative counts, sent as events.

    ``update`` may be called from the engine's loop thread (it only stores); ``draw`` and
    ``close`` run on the task thread. ``rows`` is the partition's length: the final event
    counts every row as done, rows with no prompt included.
    """

    def __init__(self, rows: int, emit: Callable[[dict[str, Any]], None], *,
                 token: str | None = None, part: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rows = rows
        self.token = token
        self.attempt = uuid.uuid4().hex
        self.part = self.attempt if part is None else part
        self._emit = emit
        self._clock = clock
        self._latest: BatchSnapshot | None = None
        self._sent_at = -float("inf")
        self._version = self._sent_version = 0
        self._closed = False

    def update(self, snapshot: BatchSnapshot) -> None:
        """Store the batch's newest snapshot."""
        self._latest = snapshot
        self._version += 1

    def draw(self) -> None:
        """Send the counts when they changed and the last event is old enough."""
        now = self._clock()
        if self._version != self._sent_version and now - self._sent_at >= REPORT_INTERVAL_S:
            self._send(final=False)

    def close(self, status: str = "done") -> None:
        """Send the final counts: every row of the partition is done."""
        if not self._closed:
            self._closed = True
            self._send(final=True, status=status)

    def start(self) -> None:
        """Announce the partition (its row count) before anything is answered."""
        self._send(final=False)

    def _send(self, *, final: bool, status: str | None = None) -> None:
        snap = self._latest or BatchSnapshot(total=0)
        counts = {name: int(getattr(snap, name)) for name in COUNTS}
        counts["total"] = self.rows
        if final:
            # Rows the batch never counted (no prompt, or never run in an aborted batch).
            counts["done"] = self.rows
            counts["retrying"] = counts["in_flight"] = 0
        message = {"token": self.token, "part": self.part, "attempt": self.attempt,
                   "final": final, **counts,
                   "latency_sum": (snap.mean_latency_s or 0.0) * snap.received,
                   "last_error": snap.last_error, "status": status}
        self._sent_at, self._sent_version = self._clock(), self._version
        try:
            self._emit(message)
        except Exception:  # progress must never fail a partition
            pass


def reporter_for(rows: int, token: str | None = None, part: int | None = None) -> PartitionReporter:
    """A reporter for the partition running on this thread: a worker's events, or in-process."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return PartitionReporter(rows, _publish_local, token=token, part=part)
    return PartitionReporter(rows, lambda msg: worker.log_event(TOPIC, msg), token=token, part=part)


def part_id(message: dict[str, Any]) -> str:
    """Which partition of which computation an event is about."""
    return f"{message.get('token')}:{message.get('part')}"


class ClusterProgress:
    """The notebook's view of every partition's counts, as one :class:`BatchSnapshot`.

    :meth:`handle` takes one event (any thread); :meth:`snapshot` sums the newest attempt of
    every partition. ``expected`` is the number of partitions the computation has (when
    known): it estimates the total until all have started, and tells when all are done.
    ``sink`` (a bar, a heartbeat line, or nothing) is fed by :meth:`draw`.
    """

    def __init__(self, progress: Any = True, *, label: str = "minima (dask)",
                 expected: int | None = None, heartbeat_s: float = 10.0, stall_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._started = clock()
        self._parts: dict[str, dict[str, Any]] = {}
        self._last_done_at = self._started
        self._samples: deque[tuple[float, int]] = deque(maxlen=512)
        self.expected = expected
        self.events = 0
        self.last_event_at = self._started
        self.sink = make_sink(progress, label=label, heartbeat_s=heartbeat_s, stall_s=stall_s)

    def is_rerun(self, message: dict[str, Any]) -> bool:
        """Whether the event is a new attempt of a partition that already finished.

        That is Dask re-running it (a worker died holding its result, or the partition runs
        again before the view closed): its rows are counted already.
        """
        with self._lock:
            part = self._parts.get(part_id(message))
        return part is not None and part["final"] and part["attempt"] != message["attempt"]

    def handle(self, message: dict[str, Any]) -> None:
        """Take one partition event; a new attempt of a partition replaces an unfinished one."""
        with self._lock:
            self.events += 1
            self.last_event_at = self._clock()
            key = part_id(message)
            part = self._parts.get(key)
            if part is not None and part["attempt"] != message["attempt"] and part["final"]:
                return  # a finished partition is final; a late duplicate attempt changes nothing
            if part is not None and part["final"] and not message["final"]:
                return  # an event overtaken by its attempt's final one
            if part is None or part["done"] != message["done"]:
                self._last_done_at = self.last_event_at
            self._parts[key] = dict(message)
        self.sink.update(self.snapshot())

    def running(self) -> bool:
        """Whether some partition that started has not finished."""
        with self._lock:
            return any(not p["final"] for p in self._parts.values())

    def complete(self) -> bool:
        """Whether every expected partition has finished."""
        with self._lock:
            finished = sum(1 for p in self._parts.values() if p["final"])
        return self.expected is not None and finished >= self.expected

    def totals(self) -> dict[str, int]:
        """The summed counts of every partition's newest attempt (the real total, no estimate)."""
        with self._lock:
            parts = list(self._parts.values())
        return {name: sum(int(p[name]) for p in parts) for name in COUNTS}

    def snapshot(self, *, final: bool = False) -> BatchSnapshot:
        """The cluster-wide counts as one snapshot (what the sinks draw)."""
        with self._lock:
            parts = list(self._parts.values())
            last_done_at = self._last_done_at
        counts = {name: sum(int(p[name]) for p in parts) for name in COUNTS}
        if not final and self.expected and parts and len(parts) < self.expected:
            # Not every partition has started: guess the rest from those seen so far.
            counts["total"] = math.ceil(counts["total"] * self.expected / len(parts))
        latency_sum = sum(float(p.get("latency_sum") or 0.0) for p in parts)
        errors = [p["last_error"] for p in parts if p.get("last_error")]
        now = self._clock()
        elapsed = now - self._started
        self._samples.append((now, counts["done"]))
        while len(self._samples) > 2 and now - self._samples[0][0] > _RATE_WINDOW_S:
            self._samples.popleft()
        t0, done0 = self._samples[0]
        per_s = (counts["done"] - done0) / (now - t0) if now - t0 > 0.5 else (
            counts["done"] / elapsed if elapsed > 0 else 0.0)
        remaining = counts["total"] - counts["done"]
        fields: dict[str, Any] = dict(counts)  # the row counts; the preview fields keep their defaults
        return BatchSnapshot(
            **fields, rpm=per_s * 60.0, elapsed_s=elapsed,
            eta_s=remaining / per_s if per_s > 0 else (0.0 if remaining == 0 else None),
            idle_s=now - last_done_at,
            mean_latency_s=latency_sum / counts["received"] if counts["received"] else None,
            last_error=errors[-1] if errors else None,
        )

    def draw(self) -> None:
        """Let the sink draw the newest counts (call from the thread that shows them)."""
        self.sink.draw()

    def close(self, status: str = "done") -> BatchSnapshot:
        """Draw the final state (the real counts); return it."""
        final = self.snapshot(final=True)
        self.sink.update(final)
        self.sink.draw()
        self.sink.close(status)
        return final
