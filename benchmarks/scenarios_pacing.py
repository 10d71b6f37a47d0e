"""Scenario 12: pacing without headers (a hidden limit, a limit that rises) and a lowered limit.

Every run is one child of :mod:`benchmarks.adaptive` (mock server and client in one process, a
few requests per second each), all in parallel: the scenario takes as long as its longest run,
4 minutes. The baseline in the same run is minima_nb with ``adaptive_rpm=False``: the shared
cooldown alone, which backs off on each 429 and never probes back up, as Inspect AI does.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .harness import run_child
from .report import Section, Target, count, percent

LIMIT, RISEN, LOWERED = 300, 600, 300
HIDDEN_S, RISING_S, RISE_AT, LOWERED_S, LOWER_AT = 180, 240, 120, 40, 10
WINDOW_S = 10  # the hidden limit is enforced as 50 requests per sliding 10 s


def _specs() -> dict[str, dict[str, Any]]:
    hidden = {"server_rpm": LIMIT, "rpm": 600, "duration_s": HIDDEN_S, "warm_s": 60, "window_s": WINDOW_S}
    rising = {"server_rpm": LIMIT, "rpm": 1200, "duration_s": RISING_S, "warm_s": 60, "window_s": WINDOW_S,
              "changes": [[RISE_AT, RISEN]], "follow_s": 60}
    return {
        "hidden": hidden,
        "hidden, cooldown only": {**hidden, "adaptive": False},
        "hidden, 1-s window": {**hidden, "window_s": 1},
        "hidden, 1-s window, cooldown only": {**hidden, "window_s": 1, "adaptive": False},
        "hidden, 60-s window": {**hidden, "window_s": 60},
        "rising": rising,
        "rising, cooldown only": {**rising, "adaptive": False},
        "lowered": {"server_rpm": 600, "rpm": 600, "duration_s": LOWERED_S, "headers": True,
                    "changes": [[LOWER_AT, LOWERED]], "settle_s": 10},
    }


def _fmt(value: Any, fmt: Any = count) -> str:
    return "–" if value is None else fmt(value)


def scenario_adaptive(workdir: Path, log: Any) -> Section:
    """Scenario 12; see the module docstring."""
    specs = _specs()
    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        results = dict(zip(specs, pool.map(lambda s: run_child("benchmarks.adaptive", s, workdir), specs.values()),
                           strict=True))
    for name, res in results.items():
        log(f"  {name}: {res}")
    rows, notes = [], [f"{name}: {res['error'][:400]}" for name, res in results.items() if "error" in res]
    for name, res in results.items():
        if "error" in res:
            continue
        limit = specs[name]["changes"][0][1] if name.startswith("rising") else specs[name]["server_rpm"]
        after = res.get("ok_rate_after") if name.startswith("rising") else res.get("sent_after")
        warm = name != "lowered"  # a 40-s run: no first minute to leave out
        rows.append([name, f"{specs[name]['window_s'] if 'window_s' in specs[name] else 60} s",
                     count(res["sent"]), count(res["status_429"]), count(res["ok_rate"]) if warm else "–",
                     _fmt(res["share_429"], percent) if warm else "–",
                     _fmt(after), _fmt(res.get("reach_s") if name.startswith("rising") else res.get("settle_s_measured"),
                                       lambda v: f"{v:.1f} s"), f"{limit}"])
    notes += [
        f"Hidden: `MockServer(rate_limit={LIMIT}, ratelimit_headers=False, rate_window_s={WINDOW_S})` "
        f"(429 with `Retry-After` past {LIMIT * WINDOW_S // 60} requests per sliding {WINDOW_S} s, no "
        f"`x-ratelimit-*` header), minima_nb at `rpm=600`, 64 workers, {HIDDEN_S} s; the 2xx rate and the 429 "
        "share count attempts sent after the first minute.",
        f"Rising: the same server at {LIMIT} rpm raised to {RISEN} after {RISE_AT} s, `rpm=1200`, {RISING_S} s; "
        f"'after' is the 2xx rate from a minute after the rise to the end, 'settled/reached' the first time "
        f"after the rise at which the 2xx rate over the preceding 10 s is ≥ 90 % of {RISEN}. The rise "
        "frees half a window at once, so a client that bursts can reach that figure once and fall back "
        "(cooldown only does): the target also asks for ≥ 80 % of the new limit kept from a minute "
        "after the rise to the end.",
        f"Lowered (with headers, scenario 7's server: sliding 60-s window, `x-ratelimit-*`): {600} rpm "
        f"lowered to {LOWERED} after {LOWER_AT} s, {LOWERED_S} s; 'after' is the send rate from 10 s after "
        "the lowering to the end, 'settled' how long after the lowering every 10-s window of sends stays "
        "within 5 % of the new limit. The 60-s window still holds the first 10 s's requests, so the run "
        "ends before they would make the server refuse a steady 300 rpm.",
        "'cooldown only' is minima_nb with `adaptive_rpm=False`: each 429 pauses every worker for its "
        "Retry-After (the shared cooldown) and the rate is never lowered or probed back up, as in Inspect AI. "
        "A 60-s window is lenient to it: the server refuses only once a whole minute's budget is spent, "
        "then admits again as the window slides, so bursts and pauses still use all of the limit.",
    ]
    section = Section(
        "12. Pacing without headers: a hidden limit, a limit that rises, a lowered limit",
        "minima_nb against the embedded mock server enforcing a limit it does not state (no rate-limit "
        "headers, only 429s), one that rises half-way, and one it states and lowers; all runs in "
        f"parallel, {max(HIDDEN_S, RISING_S) // 60} minutes in all. Rates are per minute, from the send "
        "time and status of every HTTP attempt.",
        ["run", "server window", "attempts", "429s", "2xx rate after the first minute (rpm)",
         "429 share after the first minute", "rate after (rpm)", "settled / reached", "limit (rpm)"],
        rows, notes)
    hidden, rising, lowered = results["hidden"], results["rising"], results["lowered"]
    if "error" not in hidden:
        used = hidden["ok_rate"] / LIMIT
        section.targets.append(Target("12", "hidden 300 rpm, no headers: ≤ 2 % 429s and ≥ 90 % of the limit used "
                                      "after the first minute", f"{percent(hidden['share_429'] or 0)} 429s, "
                                      f"{percent(used)} used", (hidden["share_429"] or 0) <= 0.02 and used >= 0.9))
    if "error" not in rising:
        reach = rising.get("reach_s")
        after = rising["ok_rate_after"]
        section.targets.append(Target("12", "limit rises 300 → 600 half-way: the rate follows it up within a minute "
                                      "(≥ 90 % of 600 over 10 s within 60 s, ≥ 80 % kept after)",
                                      f"≥ 90 % of 600 after {_fmt(reach, lambda v: f'{v:.0f} s')}; "
                                      f"{after:.0f} rpm from a minute after the rise",
                                      reach is not None and reach <= 60 and after >= 0.8 * RISEN))
    if "error" not in lowered:
        settle = lowered.get("settle_s_measured")
        section.targets.append(Target("12", "limit lowered 600 → 300: within 5 % of 300 within 10 s, zero 429s",
                                      f"settled after {_fmt(settle, lambda v: f'{v:.1f} s')}, "
                                      f"{lowered['sent_after']:.0f} rpm, {lowered['status_429']} × 429",
                                      settle is not None and settle <= 10 and lowered["status_429"] == 0))
    return section
