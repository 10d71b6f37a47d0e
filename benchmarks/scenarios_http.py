"""Scenarios that talk HTTP: 1 (throughput), 2 (50 ms latency), 3 (cost of caching), 7 (pacing).

Each ``scenario_*`` function runs its rounds through :func:`harness.run_child` and returns a
:class:`report.Section` holding its table, notes and targets.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .clients import CLIENTS
from .harness import Upstream, run_child
from .report import Section, Target, clean, count, median, micro, percent, ratio, spread

NAMES = {"aiohttp": "aiohttp, raw (the floor)", "minima_nb": "**minima_nb** run_batched",
         "openai": "openai-python AsyncOpenAI", "litellm": "litellm acompletion",
         "minima_llm": "minima-llm 0.2.8 run_batched"}
CONCURRENCY = 64
FLUSH_INTERVAL_S = 0.05  # PromptCache's default flush_interval_s: the writer's lots gather that long
IDEAL_50MS = CONCURRENCY / 0.05


def _rotated(items: tuple[str, ...], shift: int) -> list[str]:
    shift %= len(items)
    return [*items[shift:], *items[:shift]]


def _run_clients(upstream: Upstream, workdir: Path, rounds: int, n: int, log: Any) -> list[dict]:
    """Every client once per round, in a rotating order; ``[{client: result}]`` per round."""
    per_round = []
    for r in range(rounds):
        results = {}
        for client in _rotated(CLIENTS, r):
            spec = {"client": client, "url": upstream.url, "n": n, "concurrency": CONCURRENCY}
            result = run_child("benchmarks.clients", spec, workdir)
            if "error" not in result and result["ok"] == n:
                result["req_s"] = n / result["wall_s"]
                result["cpu_us"] = result["cpu_s"] / n * 1e6
                result["upstream_cpu"] = upstream.cpu_share(result)
            else:
                result.setdefault("error", f"only {result.get('ok')} of {n} answered: {result.get('first_error')}")
            results[client] = result
            log(f"  round {r + 1}/{rounds} {client:10s} "
                + (f"{result['req_s']:8,.0f} req/s {result['cpu_us']:7,.0f} µs/req"
                   if "req_s" in result else f"FAILED {result['error'][:300]}"))
        per_round.append(results)
    return per_round


def _column(per_round: list[dict], client: str, name: str) -> list[float | None]:
    return [r[client].get(name) for r in per_round]


def _ratios(per_round: list[dict], top: str, bottom: str, name: str) -> list[float | None]:
    out = []
    for r in per_round:
        a, b = r[top].get(name), r[bottom].get(name)
        out.append(a / b if a and b else None)
    return out


def _failures(per_round: list[dict]) -> list[str]:
    return [f"round {i + 1}, {client}: {res['error'][:400]}" for i, r in enumerate(per_round)
            for client, res in r.items() if "error" in res]


def _network_note(per_round: list[dict]) -> str:
    blocked = sorted({host for r in per_round for res in r.values() for host in res.get("blocked_network", [])})
    return ("Connections anywhere but 127.0.0.1 are refused in every client process "
            "(benchmarks/netguard.py); attempts refused: " + (", ".join(blocked) if blocked else "none") + ".")


def _upstream_note(per_round: list[dict]) -> str:
    shares = clean(res.get("upstream_cpu") for r in per_round for res in r.values())
    top = max(shares) if shares else None
    return ("The upstream used at most " + (percent(top) if top is not None else "n/a")
            + " of its core during any client's run, so it was never the bottleneck.")


def scenario_throughput(upstream: Upstream, workdir: Path, rounds: int, n: int, log: Any) -> Section:
    """Scenario 1: ``n`` distinct requests, concurrency 64, 0 ms server latency."""
    per_round = _run_clients(upstream, workdir, rounds, n, log)
    rows = []
    for client in CLIENTS:
        rows.append([NAMES[client], spread(_column(per_round, client, "req_s"), count),
                     spread(_column(per_round, client, "cpu_us"), micro),
                     spread(_ratios(per_round, client, "aiohttp", "cpu_us"), ratio),
                     "–" if client == "minima_nb" else spread(_ratios(per_round, "minima_nb", client, "req_s"), ratio),
                     spread(_column(per_round, client, "upstream_cpu"), percent)])
    cpu_vs_floor = median(_ratios(per_round, "minima_nb", "aiohttp", "cpu_us"))
    vs_llm = median(_ratios(per_round, "minima_nb", "minima_llm", "req_s"))
    vs_openai = median(_ratios(per_round, "minima_nb", "openai", "req_s"))
    section = Section(
        f"1. Throughput: {n:,} distinct requests, concurrency 64, 0 ms latency",
        f"Each client sends {n:,} distinct chat requests (one user message each) to the upstream "
        f"with {CONCURRENCY} in flight, after an untimed warm-up batch of 64 in the same process; minima_nb with `rpm=0, max_outstanding=64, num_workers=64, "
        "progress=False`, cache off; minima-llm through its environment variables (`RPM=0 "
        "MAX_OUTSTANDING=64 BATCH_NUM_WORKERS=64`, no `CACHE_DIR`); the others driven by 64 "
        "worker tasks, no retries.",
        ["client", "requests/s", "client CPU per request", "CPU ÷ raw aiohttp's",
         "minima_nb's req/s ÷ this", "upstream CPU"], rows,
        [_upstream_note(per_round), _network_note(per_round), *_failures(per_round)])
    section.targets = [
        Target("1", "minima_nb CPU per request ≤ 2× raw aiohttp's", _fmt(cpu_vs_floor, ratio),
               None if cpu_vs_floor is None else cpu_vs_floor <= 2.0),
        Target("1", "minima_nb req/s ≥ 2.5× minima-llm 0.2.8's", _fmt(vs_llm, ratio),
               None if vs_llm is None else vs_llm >= 2.5),
        Target("1", "minima_nb req/s ≥ 5× openai-python's", _fmt(vs_openai, ratio),
               None if vs_openai is None else vs_openai >= 5.0),
    ]
    return section


def scenario_latency(upstream: Upstream, workdir: Path, rounds: int, n: int, log: Any) -> Section:
    """Scenario 2: ``n`` requests, concurrency 64, 50 ms server latency; share of 64/0.05 req/s."""
    per_round = _run_clients(upstream, workdir, rounds, n, log)
    probe = run_child("benchmarks.clients", {"probe": "round_trip", "url": upstream.url, "n": 50}, workdir)
    ceiling_note = ""
    if "error" not in probe:
        # No client can beat one request at a time: n requests take at least ceil(n / 64) such trips.
        waves = -(-n // CONCURRENCY)
        ceiling = n / (waves * probe["mean_s"])
        best = median(_column(per_round, "minima_nb", "req_s"))
        log(f"  one request at a time: {probe['mean_s'] * 1e3:.2f} ms; ceiling {ceiling:,.0f} req/s")
        ceiling_note = (
            f"The ceiling on this machine: one request at a time takes {probe['mean_s'] * 1e3:.2f} ms on "
            f"average (median {probe['median_s'] * 1e3:.2f} ms; raw aiohttp, 50 requests on one "
            "connection): the upstream's 50 ms, its event loop's timer (which wakes to the millisecond) "
            f"and both loops' own work. {n:,} requests need at least {waves} such trips on some "
            f"connection, so a client no cheaper per request than raw aiohttp cannot exceed "
            f"{ceiling:,.0f} req/s = {percent(ceiling / IDEAL_50MS)} of the ideal here (one costing "
            "nothing would gain at most raw aiohttp's fraction of a millisecond per trip); minima_nb "
            f"reached {percent(best / ceiling) if best else 'n/a'} of that ceiling.")
    rows = [[NAMES[c], spread(_column(per_round, c, "req_s"), count),
             spread([v / IDEAL_50MS if v else None for v in _column(per_round, c, "req_s")], percent),
             spread(_ratios(per_round, c, "aiohttp", "req_s"), ratio),
             spread(_column(per_round, c, "cpu_us"), micro),
             spread(_column(per_round, c, "upstream_cpu"), percent)] for c in CLIENTS]
    share = median(_column(per_round, "minima_nb", "req_s"))
    share = share / IDEAL_50MS if share else None
    floor = median(_column(per_round, "aiohttp", "req_s"))
    context = (f"Raw aiohttp, which does nothing but send and parse, reaches {percent(floor / IDEAL_50MS)} of the "
               "ideal here: the rest goes to opening 64 connections, to the last partial wave "
               f"({n:,} requests are {n / CONCURRENCY:.2f} × 64) and to the event loop's own time per answer." if floor else "")
    section = Section(
        f"2. Latency-bound: {n:,} requests, concurrency 64, 50 ms per answer",
        f"The same clients and settings against an upstream that answers each request after 50 ms: "
        f"the ideal is {CONCURRENCY} / 0.05 s = {IDEAL_50MS:,.0f} requests/s.",
        ["client", "requests/s", "share of the ideal 1,280/s", "req/s ÷ raw aiohttp's", "client CPU per request",
         "upstream CPU"],
        rows, [context, *([ceiling_note] if ceiling_note else []), _upstream_note(per_round),
               _network_note(per_round), *_failures(per_round)])
    section.targets = [Target("2", "minima_nb ≥ 95 % of the ideal 1,280 req/s", _fmt(share, percent),
                              None if share is None else share >= 0.95)]
    return section


def scenario_cache_cost(upstream: Upstream, workdir: Path, rounds: int, n: int, log: Any) -> Section:
    """Scenario 3: minima_nb over ``n`` requests with the cache off, then on (all misses).

    ``2 * rounds + 1`` pairs: the difference sought (a few µs per request) is smaller than the
    machine's noise between two runs, and a pair costs only a few seconds.
    """
    per_round = []
    rounds = 2 * rounds + 1
    for r in range(rounds):
        results = {}
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
            cache_dir = workdir / f"cache-cost-{r}"
            spec = {"client": "minima_nb", "url": upstream.url, "n": n, "concurrency": CONCURRENCY,
                    "cache_dir": str(cache_dir) if mode == "on" else None}
            result = run_child("benchmarks.clients", spec, workdir)
            shutil.rmtree(cache_dir, ignore_errors=True)
            shutil.rmtree(f"{cache_dir}-warm-up", ignore_errors=True)
            if "error" not in result and result["ok"] == n:
                result.update(req_s=n / result["wall_s"], cpu_us=result["cpu_s"] / n * 1e6)
            else:
                result.setdefault("error", f"only {result.get('ok')} of {n} answered")
            results[mode] = result
            log(f"  round {r + 1}/{rounds} cache {mode:3s} "
                + (f"{result['cpu_us']:7,.0f} µs/req" if "cpu_us" in result else "FAILED"))
        results["floor"] = _commit_floor(workdir, n, results["on"].get("req_s"), r)
        per_round.append(results)

    def share(r: dict[str, dict], mode: str) -> float | None:
        """CPU per request of ``mode`` over cache off's, minus one: the extra CPU."""
        return r[mode]["cpu_us"] / r["off"]["cpu_us"] - 1 if "cpu_us" in r[mode] and "cpu_us" in r["off"] else None

    extra = [share(r, "on") for r in per_round]
    floor = [None if share(r, "floor") is None else share(r, "floor") + 1 for r in per_round]
    rows = [[f"cache {mode}" + (" (fresh directory: every request a miss, every answer stored)" if mode == "on" else ""),
             spread([r[mode].get("req_s") for r in per_round], count),
             spread([r[mode].get("cpu_us") for r in per_round], micro),
             "–" if mode == "off" else spread(extra, percent)] for mode in ("off", "on")]
    lots = [r["floor"].get("lot") for r in per_round if "lot" in r["floor"]]
    rows.append([f"the floor: bare sqlite3 committing the same {n:,} rows with the cache's upsert, lots of "
                 f"{_fmt(median(lots), lambda v: f'{v:,.0f}')} (fresh file to closed file, no Python per row)",
                 "–", spread([r["floor"].get("cpu_us") for r in per_round], micro),
                 spread(floor, percent)])
    cost = median(extra)
    section = Section(
        f"3. Cost of caching: the same {n:,} requests with the cache on, first pass",
        f"minima_nb alone, cache off and then on (a new cache directory each round), in alternating "
        f"order, {rounds} pairs (more than elsewhere: the difference is small beside the noise); with "
        "the cache on, the untimed warm-up batch uses a cache too. The CPU includes the cache's writer thread, opening the file, the final commit and "
        "closing the backend.",
        ["minima_nb", "requests/s", "CPU per request", "extra CPU for caching"], rows,
        _failures(per_round))
    floor_share = median(floor)
    section.notes.append(
        "The floor row is a third child per round: the rows a cache-on run stores, built untimed, "
        "committed to a new cache file with the writer's own statement in lots of the size the "
        "writer forms at the cache-on run's rate (its rows per second × the 50 ms flush interval). "
        "Its CPU per row is set against cache off's CPU per request: what storing costs any "
        "client of this schema, before keying, looking up and handing the rows over.")
    section.targets = [Target(
        "3", "caching costs ≤ 5 % extra CPU (issue 16)",
        _fmt(cost, percent) + ("" if floor_share is None else f" (bare SQLite's commits alone: {percent(floor_share)})"),
        None if cost is None else cost <= 0.05)]
    return section


def _commit_floor(workdir: Path, n: int, rate: float | None, round_: int) -> dict[str, Any]:
    """Scenario 3's floor for one round: ``n`` rows committed in the writer's lots at ``rate``."""
    if rate is None:
        return {"error": "no cache-on rate to size the lots by"}
    lot = max(1, round(rate * FLUSH_INTERVAL_S))
    directory = workdir / f"cache-floor-{round_}"
    result = run_child("benchmarks.cachebench", {"task": "commit_floor", "n": n, "lot": lot,
                                                 "dir": str(directory)}, workdir)
    shutil.rmtree(directory, ignore_errors=True)
    if "cpu_s" in result:
        result.update(cpu_us=result["cpu_s"] / n * 1e6, lot=lot)
    return result


def scenario_pacing(workdir: Path, log: Any) -> Section:
    """Scenario 7: RPM=600 for 20 s against MockServer(rate_limit=600), then with the limit halved."""
    specs = [{"rpm": 600, "server_rpm": 600, "duration_s": 20, "client": "steady"},
             {"rpm": 600, "server_rpm": 600, "lower_to": 300, "duration_s": 20, "client": "lowered"}]
    with ThreadPoolExecutor(max_workers=2) as pool:  # 10 req/s each: they do not disturb each other
        steady, lowered = pool.map(lambda s: run_child("benchmarks.pacing", s, workdir), specs)
    for name, res in (("steady", steady), ("lowered", lowered)):
        log(f"  pacing {name}: {res if 'error' in res else {k: round(v, 1) for k, v in res.items() if isinstance(v, float)}}")
    rows, notes = [], [f"{name}: {res['error'][:400]}" for name, res in (("steady", steady), ("lowered", lowered))
                       if "error" in res]
    if "error" not in steady:
        rows.append(["server limit 600 throughout", count(steady["sent"]), count(steady["rate_overall"]),
                     count(steady["rate_steady"]), "–", "–", count(steady["status_429"])])
    if "error" not in lowered:
        rows.append(["server lowers its limit to 300 after 10 s", count(lowered["sent"]),
                     count(lowered["rate_overall"]), "–", count(lowered["rate_first_half"]),
                     f"{count(lowered['rate_second_half'])} ({count(lowered['rate_second_half_steady'])} after its first 2 s)",
                     count(lowered["status_429"])])
    notes.append("The first-second burst (up to 10 requests at 600 rpm) is part of the design: "
                 "the overall rate includes it, the steady rate is measured after the first 2 s.")
    notes.append("When the server lowers its limit, the 64 workers already hold starts booked at the "
                 "600-rpm spacing (up to 6.4 s ahead); the pacer re-spaces those bookings at the new "
                 "rate when the first answer carrying the new limit arrives, so the second half runs "
                 "at the lowered rate rather than finishing the old schedule first.")
    section = Section(
        "7. Pacing accuracy: RPM=600 for 20 s against a server enforcing 600 rpm",
        "minima_nb (`rpm=600`, 64 workers) against `MockServer(rate_limit=600)` (sliding 60-s "
        "window, `x-ratelimit-*` headers, 429 past the limit) for 20 s, the batch cancelled at "
        "the end; rates are requests started per minute, counted from the send times.",
        ["run", "requests sent", "rate overall (rpm)", "steady rate (rpm)", "first half (rpm)",
         "second half (rpm)", "429s"], rows, notes)
    if "error" not in steady:
        off = abs(steady["rate_steady"] / 600 - 1)
        section.targets.append(Target("7", "steady rate within 3 % of 600 rpm, zero 429s",
                                      f"{steady['rate_steady']:.0f} rpm ({percent(off)} off), "
                                      f"{steady['status_429']} × 429",
                                      off <= 0.03 and steady["status_429"] == 0))
    if "error" not in lowered:
        section.targets.append(Target("7", "limit lowered to 300 half-way: zero 429s (rates reported)",
                                      f"{lowered['status_429']} × 429; {lowered['rate_first_half']:.0f} rpm, then "
                                      f"{lowered['rate_second_half']:.0f} rpm",
                                      lowered["status_429"] == 0))
    return section


def _fmt(value: float | None, fmt: Any) -> str:
    return "n/a" if value is None else fmt(value)
