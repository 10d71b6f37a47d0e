"""Rate-limit header parsing and the request pacer, on a fake clock (no real sleeping)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest

from minima_nb.engine.limits import RateLimitInfo, parse_duration, parse_retry_after
from minima_nb.engine.pacer import RatePacer
from minima_nb.errors import ConfigError

NOW_EPOCH = 1_700_000_000.0


class FakeTime:
    """A virtual clock: sleepers wake in time order and time jumps, instead of passing."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._order), future))
        await future

    async def run(self, *coros):
        """Run coroutines concurrently, advancing time whenever all of them are asleep."""
        tasks = [asyncio.ensure_future(c) for c in coros]
        for _ in range(200_000):
            for _ in range(4):
                await asyncio.sleep(0)
            if all(t.done() for t in tasks):
                break
            assert self._sleepers, "a task is blocked on something other than the fake sleep"
            when, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, when)
            future.set_result(None)
        return await asyncio.gather(*tasks)

    def pacer(self, rpm: int, **kwargs) -> RatePacer:
        return RatePacer(rpm, clock=self.clock, sleep=self.sleep, **kwargs)


def start_times(fake: FakeTime, pacer: RatePacer, count: int, tokens: int = 0) -> list[float]:
    """Acquire ``count`` times concurrently; return each start time relative to the first call."""
    origin = fake.now
    starts: list[float] = []

    async def one() -> None:
        await pacer.acquire(tokens)
        starts.append(fake.now - origin)

    asyncio.run(fake.run(*(one() for _ in range(count))))
    return sorted(starts)


def sequential_starts(fake: FakeTime, pacer: RatePacer, count: int, tokens: int = 0) -> list[float]:
    """Acquire ``count`` times one after another; return start times relative to the first call."""
    origin = fake.now
    starts: list[float] = []

    async def loop() -> None:
        for _ in range(count):
            await pacer.acquire(tokens)
            starts.append(fake.now - origin)

    asyncio.run(fake.run(loop()))
    return starts


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


def info(**fields) -> RateLimitInfo:
    return RateLimitInfo(**fields)


# -- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20", 20.0), ("0.5", 0.5), ("0", 0.0), ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02),
        ("1h2m3.5s", 3723.5), ("2m", 120.0), ("1.5s", 1.5), ("0s", 0.0), (" 7s ", 7.0),
        ("100us", 0.0001), ("1m30s", 90.0),
    ],
)
def test_parse_duration_reads_seconds_and_openai_durations(text, seconds):
    """Plain seconds and Go/OpenAI duration strings become seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_duration_reads_epoch_seconds_relative_to_now():
    """A Unix time in seconds means 'until then'."""
    assert parse_duration(str(NOW_EPOCH + 42), now_epoch=NOW_EPOCH) == pytest.approx(42.0)


def test_parse_duration_reads_epoch_milliseconds():
    """A Unix time in milliseconds is recognised by its size."""
    assert parse_duration(str(int((NOW_EPOCH + 3) * 1000)), now_epoch=NOW_EPOCH) == pytest.approx(3.0)


def test_parse_duration_floors_a_past_epoch_at_zero():
    """A reset time already past means no wait, not a negative one."""
    assert parse_duration(str(NOW_EPOCH - 100), now_epoch=NOW_EPOCH) == 0.0


def test_parse_duration_reads_an_http_date():
    """An HTTP-date (as Retry-After may be) counts from now."""
    moment = datetime.fromtimestamp(NOW_EPOCH + 30, tz=timezone.utc)
    assert parse_duration(format_datetime(moment, usegmt=True), now_epoch=NOW_EPOCH) == pytest.approx(30.0)


@pytest.mark.parametrize("garbage", [None, "", "soon", "-5", "1x", "nan", "inf", "1_000", "ms", "5 s", "s1"])
def test_parse_duration_returns_none_for_garbage(garbage):
    """Missing or unreadable values mean 'not said', never an exception."""
    assert parse_duration(garbage) is None


def test_parse_retry_after_follows_the_same_rules():
    """Retry-After accepts seconds and HTTP-dates like the reset headers."""
    moment = datetime.fromtimestamp(NOW_EPOCH + 5, tz=timezone.utc)
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(format_datetime(moment, usegmt=True), now_epoch=NOW_EPOCH) == pytest.approx(5.0)
    assert parse_retry_after(None) is None


# -- headers ----------------------------------------------------------------------------------


def test_rate_limit_info_reads_openai_headers_in_any_case():
    """The six x-ratelimit headers are read whatever their case, durations included."""
    headers = {
        "X-RateLimit-Limit-Requests": "500", "x-ratelimit-remaining-requests": "499",
        "X-RATELIMIT-RESET-REQUESTS": "120ms", "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-tokens": "29000", "x-ratelimit-reset-tokens": "6m0s",
    }
    assert RateLimitInfo.from_headers(headers) == RateLimitInfo(500, 499, 0.12, 30000, 29000, 360.0)


def test_rate_limit_info_is_none_without_rate_limit_headers():
    """A response without x-ratelimit headers says nothing."""
    assert RateLimitInfo.from_headers({"content-type": "application/json"}) is None


def test_rate_limit_info_reads_aiohttp_headers_and_odd_names():
    """aiohttp's case-insensitive headers (what the transport hands over) are read, and a
    mapping whose names are not strings still yields its rate-limit headers."""
    from multidict import CIMultiDict, CIMultiDictProxy

    real = CIMultiDictProxy(CIMultiDict([("Content-Type", "application/json"),
                                         ("X-RateLimit-Remaining-Requests", "41")]))
    assert RateLimitInfo.from_headers(real) == RateLimitInfo(remaining_requests=41)
    odd = {b"server": "x", 7: "y", "x-ratelimit-limit-requests": "60"}
    assert RateLimitInfo.from_headers(odd) == RateLimitInfo(limit_requests=60)


def test_rate_limit_info_skips_unreadable_values():
    """A garbage header becomes None without losing the readable ones."""
    parsed = RateLimitInfo.from_headers({"x-ratelimit-limit-requests": "lots", "x-ratelimit-remaining-requests": "7"})
    assert parsed == RateLimitInfo(remaining_requests=7)


# -- rate and burst ---------------------------------------------------------------------------


def test_burst_lets_the_first_requests_through_at_once():
    """At 600 rpm the default burst of 10 starts at once; the 11th waits one interval."""
    fake = FakeTime()
    starts = start_times(fake, fake.pacer(600), 11)
    assert starts[:10] == [0.0] * 10
    assert starts[10] == pytest.approx(0.1)


def test_explicit_burst_of_one_spaces_evenly():
    """burst=1 gives strict even spacing."""
    fake = FakeTime()
    assert sequential_starts(fake, fake.pacer(120, burst=1), 3) == pytest.approx([0.0, 0.5, 1.0])


def test_long_run_rate_matches_rpm():
    """1200 requests at 600 rpm take about 120 seconds (within 3 %)."""
    fake = FakeTime()
    starts = sequential_starts(fake, fake.pacer(600), 1200)
    assert starts[-1] == pytest.approx(120.0, rel=0.03)


def test_long_run_rate_matches_rpm_with_concurrent_workers():
    """Concurrent acquirers share one schedule: 600 requests at 600 rpm take about 60 s."""
    fake = FakeTime()
    starts = start_times(fake, fake.pacer(600), 600)
    assert starts[-1] == pytest.approx(60.0, rel=0.03)


def test_rpm_zero_never_waits():
    """rpm=0 turns pacing off: nothing ever sleeps."""
    fake = FakeTime()
    pacer = fake.pacer(0)
    assert sequential_starts(fake, pacer, 500) == [0.0] * 500
    assert pacer.effective_rpm is None


# -- learning from headers --------------------------------------------------------------------


def test_headers_on_a_success_lower_the_rate():
    """A 2xx response reporting a lower server limit slows pacing to it."""
    fake = FakeTime()
    pacer = fake.pacer(600, burst=1)
    pacer.observe(info(limit_requests=60, remaining_requests=59, reset_requests_s=1.0))
    assert pacer.effective_rpm == 60
    assert sequential_starts(fake, pacer, 3) == pytest.approx([0.0, 1.0, 2.0])


def test_a_lowered_limit_re_spaces_starts_already_booked():
    """Workers already holding starts at the old spacing move to the new one when the limit drops."""
    fake = FakeTime()
    pacer = fake.pacer(600, burst=1)
    origin, starts = fake.now, []

    async def one() -> None:
        await pacer.acquire()
        starts.append(fake.now - origin)
        if len(starts) == 5:  # every one of the 20 booked its start at 0.1 s spacing by now
            pacer.observe(info(limit_requests=300))

    asyncio.run(fake.run(*(one() for _ in range(20))))
    starts.sort()
    assert gaps(starts[:5]) == pytest.approx([0.1] * 4)
    assert gaps(starts[4:]) == pytest.approx([0.2] * 15)
    assert pacer.effective_rpm == 300


def test_a_higher_later_limit_raises_the_rate_again():
    """The learned limit is the latest one, not the lowest one ever seen."""
    fake = FakeTime()
    pacer = fake.pacer(600)
    pacer.observe(info(limit_requests=100))
    pacer.observe(info(limit_requests=400))
    assert pacer.effective_rpm == 400


def test_configured_rpm_caps_a_generous_server_limit():
    """A server allowing more than configured does not raise the rate past the configuration."""
    fake = FakeTime()
    pacer = fake.pacer(600)
    pacer.observe(info(limit_requests=10_000))
    assert pacer.effective_rpm == 600


def test_low_remaining_spreads_requests_until_the_reset():
    """With 4 requests left and 8 s to the reset, starts are 2 s apart, and the 5th waits for the reset."""
    fake = FakeTime()
    pacer = fake.pacer(6000)
    pacer.observe(info(limit_requests=6000, remaining_requests=4, reset_requests_s=8.0))
    assert start_times(fake, pacer, 5) == pytest.approx([0.0, 2.0, 4.0, 6.0, 8.0])


def test_full_speed_returns_after_the_reset():
    """Once the reset time has passed, the low-remaining figure no longer slows anything."""
    fake = FakeTime()
    pacer = fake.pacer(600)
    pacer.observe(info(limit_requests=600, remaining_requests=2, reset_requests_s=5.0))
    fake.now += 5.0
    assert pacer.effective_rpm == 600
    assert start_times(fake, pacer, 10) == [0.0] * 10


def test_remaining_zero_waits_for_the_reset():
    """Remaining 0 on a success pauses every start until the reset."""
    fake = FakeTime()
    pacer = fake.pacer(600)
    pacer.observe(info(remaining_requests=0, reset_requests_s=7.5))
    assert pacer.cooldown_remaining() == pytest.approx(7.5)
    assert start_times(fake, pacer, 2)[0] == pytest.approx(7.5)


def test_describe_reports_the_server_view():
    """describe() names the rate, the server limit, what remains and when it resets."""
    fake = FakeTime()
    pacer = fake.pacer(600)
    pacer.observe(info(limit_requests=500, remaining_requests=12, reset_requests_s=3.2))
    text = pacer.describe()
    assert "server limit 500" in text and "12 remaining" in text and "resets in 3.2s" in text


# -- tokens -----------------------------------------------------------------------------------


def test_token_pacing_keeps_tokens_per_minute_under_the_limit():
    """At 6000 tokens/min, 1000-token requests settle to one every 10 s after the burst allowance."""
    fake = FakeTime()
    pacer = fake.pacer(0)
    pacer.observe(info(limit_tokens=6000))
    starts = sequential_starts(fake, pacer, 8, tokens=1000)
    assert starts[-1] - starts[-2] == pytest.approx(10.0)
    assert starts[-1] == pytest.approx(70.0 - 6.0)  # 7 intervals, minus the 6 s burst allowance


def test_too_few_remaining_tokens_wait_for_the_token_reset():
    """A request needing more tokens than remain waits for the token reset."""
    fake = FakeTime()
    pacer = fake.pacer(0)
    pacer.observe(info(remaining_tokens=500, reset_tokens_s=4.0))
    assert sequential_starts(fake, pacer, 1, tokens=400) == [0.0]
    assert sequential_starts(fake, pacer, 1, tokens=400) == [pytest.approx(4.0)]


def test_requests_without_a_token_estimate_ignore_token_pacing():
    """acquire() without tokens is only paced by the request rate."""
    fake = FakeTime()
    pacer = fake.pacer(0)
    pacer.observe(info(limit_tokens=100, remaining_tokens=50, reset_tokens_s=60.0))
    assert sequential_starts(fake, pacer, 3) == [0.0, 0.0, 0.0]


# -- cooldown ---------------------------------------------------------------------------------


def test_cooldown_is_shared_by_every_acquirer():
    """After one overload, a second acquirer waits too."""
    fake = FakeTime()
    pacer = fake.pacer(0)
    end = pacer.overloaded(5.0)
    assert end == pytest.approx(fake.now + 5.0)
    assert start_times(fake, pacer, 2) == pytest.approx([5.0, 5.0])


def test_cooldown_is_not_doubled_for_the_same_signal():
    """Several workers reporting one overload pause once, not once each."""
    fake = FakeTime()
    pacer = fake.pacer(0)
    for _ in range(10):
        pacer.overloaded(5.0)
    assert pacer.cooldown_remaining() == pytest.approx(5.0)


def test_retry_after_is_not_waited_on_top_of_the_cooldown():
    """A worker that reports an overload and then acquires waits the delay once."""
    fake = FakeTime()
    pacer = fake.pacer(600)

    async def worker() -> float:
        pacer.overloaded(3.0)
        return await pacer.acquire()

    assert asyncio.run(fake.run(worker())) == [pytest.approx(3.0)]


def test_later_signal_during_a_cooldown_extends_it_to_its_own_end():
    """An overload during a cooldown moves the end to its own now+delay, never the sum."""
    fake = FakeTime()
    pacer = fake.pacer(0)
    pacer.overloaded(5.0)
    fake.now += 1.0
    pacer.overloaded(5.0)
    assert pacer.cooldown_remaining() == pytest.approx(5.0)


def test_repeated_overloads_grow_the_cooldown_up_to_the_cap():
    """Each overload after the previous cooldown doubles the pause, up to cooldown_cap_s."""
    fake = FakeTime()
    pacer = fake.pacer(0, cooldown_cap_s=10.0)
    lengths = []
    for _ in range(6):
        lengths.append(pacer.overloaded(1.0) - fake.now)
        fake.now += lengths[-1]
    assert lengths[0] == pytest.approx(1.0)
    assert lengths[1] > 1.5 and lengths[2] > lengths[1]
    assert max(lengths) == pytest.approx(10.0)


def test_cooldown_penalty_halves_every_halflife_down_to_the_floor():
    """Without overloads the penalty halves every half-life and never drops below the floor."""
    fake = FakeTime()
    pacer = fake.pacer(0, cooldown_floor_s=1.5, cooldown_halflife_s=20.0)
    pacer.overloaded(8.0)
    fake.now += 20.0
    assert pacer.cooldown_penalty_s == pytest.approx(4.0)
    fake.now += 20.0
    assert pacer.cooldown_penalty_s == pytest.approx(2.0)
    fake.now += 20.0
    assert pacer.cooldown_penalty_s == pytest.approx(1.5)


def test_waiting_requests_slide_back_instead_of_bunching_after_a_cooldown():
    """Requests queued before a cooldown keep their spacing after it instead of starting together."""
    fake = FakeTime()
    pacer = fake.pacer(60, burst=1)

    async def scenario() -> list[float]:
        starts: list[float] = []

        async def one() -> None:
            await pacer.acquire()
            starts.append(fake.now)

        tasks = [asyncio.ensure_future(one()) for _ in range(4)]
        await fake.sleep(0.5)
        pacer.overloaded(10.0)
        await asyncio.gather(*tasks)
        return sorted(starts)

    (starts,) = asyncio.run(fake.run(scenario()))
    assert starts[1] >= 1000.5 + 10.0
    assert gaps(starts[1:]) == pytest.approx([1.0, 1.0])


# -- loops ------------------------------------------------------------------------------------


def test_one_pacer_works_across_two_asyncio_runs():
    """The pacer holds no loop-bound state: a second asyncio.run() keeps its schedule and cooldown."""
    fake = FakeTime()
    pacer = fake.pacer(600)
    first = start_times(fake, pacer, 12)
    pacer.overloaded(2.0)
    second = start_times(fake, pacer, 3)
    assert first[-1] == pytest.approx(0.2)
    assert second[0] >= 2.0
    assert gaps(second) == pytest.approx([0.1, 0.1])


def test_negative_rpm_is_rejected():
    """A negative rpm is a configuration error, not silent unlimited pacing."""
    with pytest.raises(ConfigError):
        RatePacer(-1)


class _Gate:
    """A shared budget that grants starts every 0.5 s and records what the pacer tells it."""

    def __init__(self, fake: FakeTime) -> None:
        self.fake, self.next = fake, 0.0
        self.seen: list = []
        self.overloads: list[float] = []

    async def permit(self) -> float:
        start, self.next = max(self.next, self.fake.now), max(self.next, self.fake.now) + 0.5
        return start

    def observe(self, info) -> None:
        self.seen.append(info)

    def overloaded(self, delay_s: float) -> None:
        self.overloads.append(delay_s)


def test_shared_budget_gate_spaces_starts_and_hears_the_server():
    """share_budget: starts wait for the gate's permits; headers and overloads reach the gate."""
    fake = FakeTime()
    pacer = fake.pacer(0)  # unpaced on its own
    gate = _Gate(fake)
    pacer.share_budget(gate)
    assert start_times(fake, pacer, 4) == pytest.approx([0.0, 0.5, 1.0, 1.5])
    info = RateLimitInfo(limit_requests=100, remaining_requests=50, reset_requests_s=1.0)
    pacer.observe(info)
    pacer.overloaded(2.0)
    assert gate.seen == [info] and gate.overloads == [2.0]
    pacer.share_budget(None)
    assert pacer.cooldown_remaining() == pytest.approx(2.0)  # the local cooldown still applies
