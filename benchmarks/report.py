"""Figures to text: medians with their range, Markdown tables, the targets, RESULTS.md.

A :class:`Section` is one scenario's part of the report: a title, what was run, one table, notes.
A :class:`Target` is one goal from the issue with the figure reached and whether it holds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


def clean(values: Iterable[float | None]) -> list[float]:
    """The numbers among ``values`` (None and failed runs left out)."""
    return [v for v in values if isinstance(v, (int, float))]


def median(values: Iterable[float | None]) -> float | None:
    numbers = clean(values)
    return statistics.median(numbers) if numbers else None


def spread(values: Iterable[float | None], fmt: Callable[[float], str]) -> str:
    """``median (min–max)``, or just the value when every run gave the same, or "n/a"."""
    numbers = clean(values)
    if not numbers:
        return "n/a"
    mid, low, high = fmt(statistics.median(numbers)), fmt(min(numbers)), fmt(max(numbers))
    return mid if low == high else f"{mid} ({low}–{high})"


def count(value: float) -> str:
    return f"{value:,.0f}"


def micro(value: float) -> str:
    return f"{value:,.0f} µs"


def ratio(value: float) -> str:
    return f"{value:.2f}×"


def percent(value: float) -> str:
    return f"{value * 100:.1f} %"


def size(value: float) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if abs(value) >= scale:
            return f"{value / scale:,.1f} {unit}"
    return f"{value:,.0f} B"


@dataclass
class Target:
    """One goal of the issue, the figure reached, and whether it holds."""

    scenario: str
    goal: str
    reached: str
    met: bool | None  # None: could not be measured


@dataclass
class Section:
    """One scenario's part of the report."""

    title: str
    about: str
    header: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", self.about, "", table(self.header, self.rows)]
        if self.notes:
            lines += ["", *[f"- {note}" for note in self.notes]]
        return "\n".join(lines) + "\n"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; the first column left-aligned, the others right-aligned."""
    align = ["---"] + ["--:"] * (len(header) - 1)
    out = [f"| {' | '.join(header)} |", f"|{'|'.join(align)}|"]
    out += [f"| {' | '.join(str(cell) for cell in row)} |" for row in rows]
    return "\n".join(out)


def verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "**missed**")


def document(machine: dict[str, Any], command: str, rounds: int, elapsed_s: float,
             capacity: dict[str, Any] | None, sections: list[Section]) -> str:
    """The whole RESULTS.md."""
    targets = [t for s in sections for t in s.targets]
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items())
    load = ", ".join(f"{v:.2f}" for v in machine["load_before"])
    if capacity and capacity.get("req_s"):
        upstream = (f"{capacity['req_s']:,.0f} req/s measured with `{capacity['wrk']}` (1 thread, 64 "
                    "connections, keep-alive, 5 s; wrk on core 0, upstream on core 1)")
    else:
        upstream = "wrk not available: see the upstream CPU column of each throughput table"
    head = [
        "# Benchmarks: minima_nb against its peers, side by side",
        "",
        f"Written by `{command}` on {machine['date']} in {elapsed_s / 60:.1f} min. Each figure is the "
        f"median over {rounds} rounds, with the range (min–max) in brackets; every client runs in a "
        "fresh process per round, in an order that rotates from round to round, and ratios are taken "
        "within a round before their median is reported. CPU is the client process's own CPU time "
        "(every thread) over the timed part only (imports and setup excluded).",
        "",
        table(["machine", ""], [
            ["CPU", f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB"],
            ["OS / Python", f"{machine['os']} / Python {machine['python']}"],
            ["pinning", machine["pinning"]],
            ["load average before the run", load],
            ["upstream capacity", upstream],
        ]),
        "",
        f"Versions: {versions}.",
        "",
        "Reproduce: `make bench` (installs `.[dev,bench]` into `.venv`, installs `wrk` when it can, "
        "then runs `python -m benchmarks.run`); one scenario: `.venv/bin/python -m benchmarks.run "
        "--only 3 --rounds 3`. The upstream is `benchmarks/upstream.py` (asyncio + httptools, "
        "OpenAI-shaped answers); the clients are in `benchmarks/clients.py`.",
        "",
        "The machine is shared (a 2-core VM); figures move by ±20 % from run to run, the ratios less.",
        "",
        "## Targets",
        "",
        table(["scenario", "target", "reached", "verdict"],
              [[t.scenario, t.goal, t.reached, verdict(t.met)] for t in targets]),
        "",
    ]
    return "\n".join(head) + "\n" + "\n".join(s.markdown() for s in sections)
