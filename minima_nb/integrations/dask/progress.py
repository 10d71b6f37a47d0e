"""Rows across the cluster: workers report their counts as events, the notebook draws one bar.

On a worker, :class:`PartitionReporter` is the progress sink of a partition's batch: it keeps
the batch's newest snapshot and, from the task thread's poll (about every 0.1 s, at most every
``REPORT_INTERVAL_S``), sends the partition's *cumulative* counts as a Dask event
(``Worker.log_event``). In the notebook, :class:`ClusterProgress` subscribes to the topic and
keeps the latest counts per partition (a partition re-run after a worker died replaces its
earlier attempt, so rows are never counted twice); the sum is a :class:`BatchSnapshot` for the
same widget bar or heartbeat line as the pandas accessor's. Without a cluster (the threaded
scheduler) events go through an in-process hub instead.

Dask's own task progress (``distributed.progress``, the dashboard) keeps working beside it.
"""

from __future__ import annotations

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

    def __init__(self, rows: int, task: str, emit: Callable[[dict[str, Any]], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rows = rows
        self.task = task
        self.attempt = uuid.uuid4().hex
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
        message = {"task": self.task, "attempt": self.attempt, "final": final, **counts,
                   "latency_sum": (snap.mean_latency_s or 0.0) * snap.received,
                   "last_error": snap.last_error, "status": status}
        self._sent_at, self._sent_version = self._clock(), self._version
        try:
            self._emit(message)
        except Exception:  # progress must never fail a partition
            pass


def reporter_for(rows: int) -> PartitionReporter:
    """A reporter for the partition running on this thread: a worker's events, or in-process."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return PartitionReporter(rows, uuid.uuid4().hex, _publish_local)
    task = str(worker.get_current_task())
    return PartitionReporter(rows, task, lambda msg: worker.log_event(TOPIC, msg))


class ClusterProgress:
    """The notebook's view of every partition's counts, as one :class:`BatchSnapshot`.

    :meth:`handle` takes one event (any thread); :meth:`snapshot` sums the newest attempt of
    every partition. ``sink`` (a bar, a heartbeat line, or nothing) is fed by :meth:`draw`.
    """

    def __init__(self, progress: Any = True, *, label: str = "minima (dask)",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._started = clock()
        self._parts: dict[str, dict[str, Any]] = {}
        self._last_done_at = self._started
        self._samples: deque[tuple[float, int]] = deque(maxlen=512)
        self.events = 0
        self.sink = make_sink(progress, label=label)

    def handle(self, message: dict[str, Any]) -> None:
        """Take one partition event; a new attempt of a partition replaces the older one."""
        with self._lock:
            self.events += 1
            part = self._parts.get(message["task"])
            if part is not None and part["attempt"] != message["attempt"] and part["final"]:
                return  # a finished partition is final; a late duplicate attempt changes nothing
            if part is None or part["done"] != message["done"]:
                self._last_done_at = self._clock()
            self._parts[message["task"]] = dict(message)
        self.sink.update(self.snapshot())

    def totals(self) -> dict[str, int]:
        """The summed counts of every partition's newest attempt."""
        with self._lock:
            parts = list(self._parts.values())
        return {name: sum(int(p[name]) for p in parts) for name in COUNTS}

    def snapshot(self) -> BatchSnapshot:
        """The cluster-wide counts as one snapshot (what the sinks draw)."""
        with self._lock:
            parts = list(self._parts.values())
            last_done_at = self._last_done_at
        counts = {name: sum(int(p[name]) for p in parts) for name in COUNTS}
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

    def close(self, status: str = "done") -> None:
        """Draw the final state."""
        self.sink.update(self.snapshot())
        self.sink.draw()
        self.sink.close(status)


class Subscription:
    """``ClusterProgress`` wired to a client's event topic and to the in-process hub."""

    def __init__(self, view: ClusterProgress, client: Any) -> None:
        self.view, self.client = view, client

    def __enter__(self) -> ClusterProgress:
        with _local_lock:
            _local_handlers.append(self.view.handle)
        if self.client is not None:
            self.client.subscribe_topic(TOPIC, lambda event: self.view.handle(event[1]))
        return self.view

    def __exit__(self, *exc_info: object) -> None:
        with _local_lock:
            if self.view.handle in _local_handlers:
                _local_handlers.remove(self.view.handle)
        if self.client is not None:
            self.client.unsubscribe_topic(TOPIC)
