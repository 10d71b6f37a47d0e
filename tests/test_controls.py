"""The per-call controls (minima-llm's context helpers): task-local values and the temperature ramp."""

from __future__ import annotations

import asyncio

import pytest

import minima_nb
from minima_nb import (
    get_force_refresh,
    get_last_cached,
    get_retry_seed,
    reset_force_refresh,
    reset_retry_seed,
    retry_temperature,
    set_force_refresh,
    set_last_cached,
    set_retry_seed,
)
from minima_nb.controls import debug_trace_enabled


def test_defaults_and_reset_restore_the_previous_value():
    """Unset controls read False / 0; a reset puts back what was there before."""
    assert (get_force_refresh(), get_retry_seed(), get_last_cached()) == (False, 0, False)
    token = set_force_refresh(True)
    seed = set_retry_seed(3)
    assert (get_force_refresh(), get_retry_seed()) == (True, 3)
    reset_retry_seed(seed)
    reset_force_refresh(token)
    assert (get_force_refresh(), get_retry_seed()) == (False, 0)


def test_debug_trace_is_task_local():
    """set_debug_trace in one task is not seen by another."""
    token = minima_nb.set_debug_trace(True)
    try:
        assert debug_trace_enabled()
    finally:
        minima_nb.reset_debug_trace(token)
    assert not debug_trace_enabled()


def test_values_do_not_leak_between_tasks():
    """A value set inside one asyncio task is invisible to a sibling task and to the caller."""

    async def setter():
        set_force_refresh(True)
        set_last_cached(True)
        await asyncio.sleep(0)
        return get_force_refresh(), get_last_cached()

    async def reader():
        await asyncio.sleep(0)
        return get_force_refresh(), get_last_cached()

    async def main():
        return await asyncio.gather(setter(), reader())

    assert asyncio.run(main()) == [(True, True), (False, False)]
    assert get_force_refresh() is False


@pytest.mark.parametrize(("attempt", "expected"), [
    (0, 0.0), (-1, 0.0), (1, 0.5 / 6), (2, 1 / 7), (3, 0.1875), (6, 3 / 11)])
def test_retry_temperature_ramp(attempt, expected):
    """max_temp * n / (n + halflife), 0 before the first attempt (minima-llm's formula)."""
    assert retry_temperature(attempt, 0.5, 5.0) == pytest.approx(expected)


def test_retry_temperature_off_without_a_maximum():
    """A non-positive maximum turns the ramp off."""
    assert retry_temperature(4, 0.0, 5.0) == 0.0
