"""Pacing without headers: the adaptive rate learned from 429s, and stated limits that relax.

The rules on the pacer's fake clock first (no real sleeping), then the behaviour a user relies
on against the embedded mock server over a real socket, at high rates for a few seconds.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from test_ratelimit import FakeTime, gaps, sequential_starts

from minima_nb import BatchConfig, MinimaLlmConfig, MinimaLlmRequest, OpenAIMinimaLlm
from minima_nb.engine.adaptive import BETA, EPOCH, AdaptiveRate
from minima_nb.engine.limits import RateLimitInfo
from minima_nb.engine.pacer import RELAX_AFTER
from minima_nb.engine.transport import AiohttpTransport
from minima_nb.testing import MockServer

# -- the controller on its own ------------------------------------------------------------------


def test_no_adaptive_limit_before_the_first_429():
    """Successes alone never set an adaptive rate: a server that never refuses is paced as configured."""
    rate = AdaptiveRate(600)
    for t in range(100):
        rate.succeeded(float(t), float(t))
    assert rate.rate is None


def test_a_429_cuts_under_the_pacing_rate_once_per_episode():
    """The first 429 cuts to BETA x the pacing rate; 429s of requests started before the cut cut nothing."""
    rate = AdaptiveRate(600)
    assert rate.limited(started_at=9.0, now=10.0, pacing_rate=600.0)
    assert rate.rate == pytest.approx(BETA * 600)
    for started in (9.5, 9.9, 9.99):  # in flight when the rate was cut
        assert not rate.limited(started_at=started, now=10.2, pacing_rate=rate.rate)
    assert rate.rate == pytest.approx(BETA * 600)
    assert rate.limited(started_at=11.5, now=12.0, pacing_rate=rate.rate)  # sent after the cut
    assert rate.rate == pytest.approx(BETA * BETA * 600)


def test_cut_follows_what_is_really_sent_when_far_under_the_pacing_rate():
    """Few workers sending 120 rpm under a 600 rpm pace: a 429 cuts from 120, not from 600."""
    rate = AdaptiveRate(600)
    for k in range(20):
        rate.started(k * 0.5)  # 2 per second
    assert rate.limited(started_at=9.6, now=10.0, pacing_rate=600.0)
    assert rate.rate == pytest.approx(BETA * 120, rel=0.1)


def test_recovery_heads_back_to_the_peak_holds_then_probes_above_it_faster_and_faster():
    """After a cut: back towards where the 429 was met, a pause just under it, then 2, 4, 8 ... % steps above."""
    rate = AdaptiveRate(10_000)
    rate.limited(started_at=0.0, now=0.0, pacing_rate=1000.0)
    seen, now = [rate.rate], 1.0  # after the cut's cover
    for _ in range(16):
        for _ in range(EPOCH):
            now += 60.0 / (rate.rate or 1)  # sending at the rate, each answered at once
            rate.started(now)
            rate.succeeded(now, now)
        seen.append(rate.rate)
    assert seen[0] == pytest.approx(900)
    assert seen[1] == pytest.approx(950)  # half the gap to the peak
    assert all(b >= a for a, b in zip(seen, seen[1:], strict=False))
    near = [r for r in seen if 980 <= r <= 1000]
    assert len(near) >= 2  # held near the peak before probing above it
    steps = gaps([r for r in seen if r >= 1000])
    assert len(steps) >= 3 and all(b >= a for a, b in zip(steps, steps[1:], strict=False))  # speeding up
    assert steps[2] > steps[0]
    assert seen[-1] > 1500  # a limit that rose is followed up


def test_a_429_with_a_long_wait_cuts_to_what_the_server_let_through():
    """50 answered in the 5 s since the last pause, then "retry after 5 s": about 300 rpm, not 0.9 x 600."""
    rate = AdaptiveRate(600)
    for k in range(50):
        rate.started(10.0 + k * 0.1)
        rate.succeeded(10.0 + k * 0.1, 10.0 + k * 0.1 + 0.01)
    assert rate.limited(started_at=14.95, now=15.0, pacing_rate=600.0, resumed_at=10.0, retry_after=5.0)
    assert rate.rate == pytest.approx(300, rel=0.05)


def test_no_raise_while_the_rate_is_not_what_holds_the_sending_back():
    """Answers keep coming but at a third of the adaptive rate (too few workers): the rate stays."""
    rate = AdaptiveRate(10_000)
    rate.limited(started_at=0.0, now=0.0, pacing_rate=1000.0)
    now = 1.0
    for _ in range(5 * EPOCH):
        now += 3 * 60.0 / 900  # a third of 900 rpm
        rate.started(now)
        rate.succeeded(now, now)
    assert rate.rate == pytest.approx(900)


def test_answers_to_requests_sent_before_a_change_do_not_count_towards_the_next_raise():
    """An epoch counts only answers to requests started after the last change of rate."""
    rate = AdaptiveRate(10_000)
    rate.limited(started_at=0.0, now=5.0, pacing_rate=1000.0)
    for k in range(3 * EPOCH):
        rate.succeeded(started_at=4.0, now=5.0 + k * 0.01)  # all sent before the cut
    assert rate.rate == pytest.approx(900)


def test_the_adaptive_rate_never_falls_under_its_floor():
    """429s that have nothing to do with the rate cannot starve the batch: 1/16 of rpm at least."""
    rate = AdaptiveRate(1600)
    now = 0.0
    for _ in range(100):
        now += 1.0
        rate.limited(started_at=now, now=now, pacing_rate=rate.rate or 1600.0)
    assert rate.rate == pytest.approx(100)


# -- the pacer with it --------------------------------------------------------------------------


def test_a_429_lowers_the_pace_and_successes_raise_it_again():
    """Pacing at 600 rpm: a 429 slows it to 540, evenly spaced; answers without 429 bring it back up."""
    fake = FakeTime()
    pacer = fake.pacer(600)
    pacer.answered(fake.now, 429, stated=False)
    assert pacer.effective_rpm == pytest.approx(540)
    starts = sequential_starts(fake, pacer, 5)
    assert gaps(starts) == pytest.approx([60 / 540] * 4)  # no burst while the server pushes back
    for _ in range(2 * EPOCH):
        sequential_starts(fake, pacer, 1)
        pacer.answered(fake.now, 200, stated=False)
    assert 540 < pacer.effective_rpm <= 600
    assert "adaptive" in pacer.describe()


@pytest.mark.parametrize("rpm,adaptive", [(0, True), (600, False)])
def test_no_adaptive_rate_with_pacing_off_or_adaptive_off(rpm, adaptive):
    """rpm=0 (pacing off) or adaptive=False: a 429 only starts the cooldown, the rate stays."""
    fake = FakeTime()
    pacer = fake.pacer(rpm, adaptive=adaptive)
    pacer.answered(fake.now, 429, stated=False)
    assert pacer.effective_rpm == (rpm or None)


def test_a_cut_and_its_cooldown_move_booked_starts_once_each():
    """A cut (re-spacing) then a 3 s cooldown: the queue resumes 3 s later at the new spacing,
    the pause not stretched by the cut (it was, when slides and stretches were applied apart)."""
    fake = FakeTime()
    pacer = fake.pacer(600, burst=1)
    origin, starts = fake.now, []

    async def one() -> None:
        await pacer.acquire()
        starts.append(fake.now - origin)
        if len(starts) == 3:
            pacer.answered(fake.now, 429, stated=False)  # 600 -> 540 rpm
            pacer.overloaded(3.0)

    asyncio.run(fake.run(*(one() for _ in range(10))))
    starts.sort()
    assert gaps(starts[:3]) == pytest.approx([0.1, 0.1])
    assert starts[3] == pytest.approx(starts[2] + 3.0, abs=0.12)  # the pause, not 3.0 x 600/540 plus
    assert gaps(starts[3:]) == pytest.approx([60 / 540] * 6)


def test_a_probe_429_with_a_short_wait_holds_back_only_the_refused_request():
    """After a cut, a 1 s Retry-After is the refused request's own wait: the others go on at the cut rate."""
    fake = FakeTime()
    pacer = fake.pacer(600)
    pacer.answered(fake.now, 429, stated=False)
    end = pacer.overloaded(1.0)
    assert end == pytest.approx(fake.now + 1.0)
    assert pacer.cooldown_remaining() == 0.0
    pacer.answered(fake.now - 0.5, 429, stated=False)  # in flight at the cut: the same overshoot
    assert pacer.overloaded(1.0) == pytest.approx(fake.now + 1.0)
    assert pacer.cooldown_remaining() == 0.0


def test_a_cut_429_does_not_double_the_cooldown():
    """Each probe that meets the limit costs its Retry-After, not a cooldown doubling every time."""
    fake = FakeTime()
    pacer = fake.pacer(600)
    for _ in range(5):
        fake.now += 10.0  # well after the previous cooldown
        pacer.answered(fake.now, 429, stated=False)
        end = pacer.overloaded(3.0)
        assert end - fake.now == pytest.approx(3.0)
        assert pacer.cooldown_remaining() == pytest.approx(3.0)


def test_without_the_adaptive_rate_repeated_429s_still_grow_the_cooldown():
    """adaptive=False keeps the old storm brake: each overload after a cooldown doubles the pause."""
    fake = FakeTime()
    pacer = fake.pacer(600, adaptive=False)
    pauses, end = [], fake.now
    for _ in range(3):
        fake.now = end + 0.1  # just after the previous cooldown
        pacer.answered(fake.now, 429, stated=False)
        end = pacer.overloaded(1.0)
        pauses.append(end - fake.now)
    assert pauses[1] > pauses[0] and pauses[2] > pauses[1]


def test_a_limit_stated_once_relaxes_when_later_answers_state_none():
    """A 429's x-ratelimit-limit of 60 holds until RELAX_AFTER headerless 2xx; then the adaptive rate takes over."""
    fake = FakeTime()
    pacer = fake.pacer(600)
    pacer.answered(fake.now, 429, stated=True)
    pacer.observe(RateLimitInfo(limit_requests=60, remaining_requests=0, reset_requests_s=1.0))
    assert pacer.effective_rpm == 60
    fake.now += 2.0  # past the reset: only the stated limit is left
    for _ in range(RELAX_AFTER - 1):
        pacer.answered(fake.now, 200, stated=False)
    assert pacer.effective_rpm == 60
    pacer.answered(fake.now, 200, stated=False)
    assert pacer.effective_rpm == pytest.approx(540)  # the adaptive cut from 600, probing up from here


def test_a_limit_restated_on_every_answer_does_not_relax():
    """A server that sends its headers on every 2xx keeps its limit, however long the run."""
    fake = FakeTime()
    pacer = fake.pacer(600)
    for _ in range(5 * RELAX_AFTER):
        pacer.answered(fake.now, 200, stated=True)
        pacer.observe(RateLimitInfo(limit_requests=120))
    assert pacer.effective_rpm == 120


# -- against the mock server --------------------------------------------------------------------


class Recorder(AiohttpTransport):
    """The real aiohttp transport, noting the send time and status of every attempt."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[float, int]] = []

    async def request(self, method, url, **kwargs):  # noqa: D102
        sent = time.monotonic()
        reply = await super().request(method, url, **kwargs)
        self.log.append((sent, reply.status))
        return reply


def paced_run(server: MockServer, *, rpm: int, seconds: float, changes=()) -> tuple[OpenAIMinimaLlm, list]:
    """run_batched with more requests than ``seconds`` allow, cut off after ``seconds``; the
    server's limit set to each ``(at_s, rpm)`` of ``changes`` on the way. Returns (backend, log)."""
    workers = 32
    config = MinimaLlmConfig(base_url=server.base_url, model="mock-model", api_key="sk-test-adaptive",
                             rpm=rpm, max_attempts=0, max_outstanding=workers, max_retry_after_s=0.2,
                             base_backoff_s=0.05, max_backoff_s=0.2, batch=BatchConfig(num_workers=workers))
    transport = Recorder()
    backend = OpenAIMinimaLlm(config, transport=transport)
    count = int(rpm * seconds / 60) + workers
    requests = [MinimaLlmRequest(str(i), [{"role": "user", "content": f"adaptive {i}"}]) for i in range(count)]

    async def go() -> None:
        loop = asyncio.get_running_loop()
        for at, limit in changes:
            loop.call_later(at, server.set_rate_limit, limit)
        try:
            await asyncio.wait_for(backend.run_batched(requests, progress=False), seconds)
        except asyncio.TimeoutError:
            pass  # the batch outlasts the window on purpose
        finally:
            await backend.aclose()

    asyncio.run(go())
    backend.close()
    first = min(t for t, _ in transport.log)
    return backend, sorted((t - first, status) for t, status in transport.log)


def counts(log: list, start: float, end: float) -> tuple[float, float]:
    """(2xx per minute, share of 429s among attempts) for attempts sent in ``[start, end)``."""
    span = [status for t, status in log if start <= t < end]
    ok = sum(200 <= s < 300 for s in span)
    return ok * 60.0 / (end - start), (span.count(429) / len(span)) if span else 0.0


@pytest.mark.timeout(60)
def test_a_hidden_limit_is_found_and_held_just_under():
    """A 1,800 rpm limit with no headers, rpm=6000: after warm-up few 429s and most of the limit used."""
    limit = 1800
    with MockServer(rate_limit=limit, rate_window_s=1.0, ratelimit_headers=False) as server:
        backend, log = paced_run(server, rpm=6000, seconds=12.0)
    ok_rate, share = counts(log, 4.0, 12.0)
    assert share <= 0.05, (share, backend.pacer.describe())
    assert 0.6 * limit <= ok_rate <= 1.05 * limit, (ok_rate, backend.pacer.describe())
    assert backend.pacer.effective_rpm < 6000  # it learned a limit under the configured rate


@pytest.mark.timeout(60)
def test_the_rate_follows_a_hidden_limit_up_and_down():
    """1,200 rpm, raised to 3,000 after 5 s, lowered to 1,200 after 15 s: the rate rises, then falls
    again after 429s, with few 429s once it has settled."""
    low, high = 1200, 3000
    with MockServer(rate_limit=low, rate_window_s=1.0, ratelimit_headers=False) as server:
        backend, log = paced_run(server, rpm=6000, seconds=21.0, changes=((5.0, high), (15.0, low)))
    before, _ = counts(log, 2.0, 5.0)
    raised, _ = counts(log, 11.0, 15.0)
    lowered, late_share = counts(log, 18.0, 21.0)
    assert before <= 1.05 * low
    assert raised >= 1.4 * before, (before, raised)  # it probed up into the new room
    assert lowered <= 1.1 * low, (raised, lowered)  # ...and came back down after the 429s
    assert late_share <= 0.1, late_share
