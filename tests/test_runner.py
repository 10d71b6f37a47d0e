"""Tests for the sync bridge: run_sync on the private background loop."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from minima_nb.engine.loop import background_loop, in_background_loop, shutdown_background_loop
from minima_nb.engine.sync import run_sync

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_loop():
    """Each test starts without a private loop and leaves none behind."""
    shutdown_background_loop()
    yield
    shutdown_background_loop()


@pytest.fixture
def default_sigint():
    """Ctrl-C raises KeyboardInterrupt in the main thread, as in a script or a kernel."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are only delivered to the main thread")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


async def _add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def _send_sigint_once(started: threading.Event) -> None:
    """Send a real SIGINT to the main thread as soon as ``started`` is set."""

    def fire() -> None:
        if started.wait(10):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=fire, daemon=True).start()


def _run_python(script: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=env,
    )


def test_returns_the_result():
    """run_sync returns what the coroutine returns."""
    assert run_sync(_add(2, 3)) == 5


def test_reraises_the_exception_with_its_type():
    """An exception raised by the coroutine reaches the caller unchanged."""

    async def boom() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        run_sync(boom())


def test_timeout_error_from_the_work_is_not_swallowed():
    """A TimeoutError raised by the work is re-raised, not taken for a poll timeout."""

    async def slow() -> None:
        await asyncio.wait_for(asyncio.sleep(60), timeout=0.01)

    with pytest.raises(asyncio.TimeoutError):  # the builtin TimeoutError from 3.11 on
        run_sync(slow())


def test_accepts_an_object_with_dunder_await():
    """A non-coroutine awaitable (a class with __await__) is run too."""

    class Answer:
        def __await__(self):
            return _add(40, 2).__await__()

    assert run_sync(Answer()) == 42


def test_accepts_a_future_of_the_private_loop():
    """An asyncio.Future created on the private loop can be awaited through run_sync."""

    async def make_future() -> asyncio.Future[str]:
        return asyncio.get_running_loop().create_future()

    future = run_sync(make_future())
    background_loop().call_soon_threadsafe(future.set_result, "done")
    assert run_sync(future) == "done"


def test_rejects_a_non_awaitable():
    """Passing something that cannot be awaited is a TypeError naming its type."""
    with pytest.raises(TypeError, match="int"):
        run_sync(42)


def test_works_inside_a_running_loop():
    """Called from sync code inside a running loop (a Jupyter cell), it runs on the private loop."""

    async def kernel_cell() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
        return asyncio.get_running_loop(), run_sync(_running_loop())

    outer, used = asyncio.run(kernel_cell())
    assert used is not outer
    assert used is background_loop()


def test_works_after_nest_asyncio_was_applied():
    """A kernel patched by nest_asyncio (before or after the loop started) still works."""
    result = _run_python(
        """
        import asyncio
        import nest_asyncio
        from minima_nb.engine.loop import shutdown_background_loop
        from minima_nb.engine.sync import run_sync

        async def add(a, b):
            await asyncio.sleep(0.01)
            return a + b

        def cell(a, b):
            return run_sync(add(a, b))

        async def kernel():
            first = cell(1, 1)
            nest_asyncio.apply()
            # the patch is live: a nested run on the kernel's own loop works
            assert asyncio.get_running_loop().run_until_complete(add(0, 0)) == 0
            second, third = cell(2, 2), cell(3, 3)
            shutdown_background_loop()
            fourth = cell(4, 4)  # a private loop created after the patch
            print(first, second, third, fourth)

        asyncio.run(kernel())
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "4", "6", "8"]


def test_reuses_the_same_loop_across_calls():
    """An object bound to the private loop in one call can be awaited in the next."""

    async def make_event() -> asyncio.Event:
        event = asyncio.Event()
        asyncio.get_running_loop().call_soon(event.set)
        return event

    async def wait_for(event: asyncio.Event) -> bool:
        await asyncio.wait_for(event.wait(), timeout=10)
        return event.is_set()

    event = run_sync(make_event())
    assert run_sync(wait_for(event)) is True


def test_loop_runs_in_a_named_daemon_thread():
    """The work runs in the daemon thread 'minima-nb-loop', not in the caller's thread."""

    async def current_thread() -> threading.Thread:
        return threading.current_thread()

    thread = run_sync(current_thread())
    assert thread.name == "minima-nb-loop"
    assert thread.daemon
    assert thread is not threading.current_thread()


def test_in_background_loop_tells_the_threads_apart():
    """in_background_loop() is True on the private loop's thread only."""

    async def ask() -> bool:
        return in_background_loop()

    assert run_sync(ask()) is True
    assert in_background_loop() is False


@pytest.mark.timeout(30)
def test_keyboard_interrupt_cancels_runs_cleanup_and_reraises(default_sigint):
    """Ctrl-C while waiting re-raises after the work's finally ran; no task of it is left."""
    started = threading.Event()
    seen: dict[str, object] = {}

    async def long_work() -> None:
        seen["task"] = asyncio.current_task()
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0)  # async cleanup (a cache flush) still gets to run
            seen["cleaned_up"] = True

    async def tasks_on_loop() -> set[asyncio.Task[object]]:
        return asyncio.all_tasks()

    _send_sigint_once(started)
    with pytest.raises(KeyboardInterrupt):
        run_sync(long_work())
    assert seen.get("cleaned_up") is True
    assert seen["task"].cancelled()
    assert seen["task"] not in run_sync(tasks_on_loop())


@pytest.mark.timeout(30)
def test_run_sync_works_again_after_an_interrupt(default_sigint):
    """After a KeyboardInterrupt the next run_sync succeeds on the same loop."""
    started = threading.Event()

    async def long_work() -> None:
        started.set()
        await asyncio.sleep(60)

    loop_before = background_loop()
    _send_sigint_once(started)
    with pytest.raises(KeyboardInterrupt):
        run_sync(long_work())
    assert run_sync(_add(1, 2)) == 3
    assert background_loop() is loop_before


def test_call_from_the_loop_thread_raises_instead_of_deadlocking():
    """run_sync inside the private loop raises a clear error and closes the coroutine it got."""

    async def nested() -> str:
        inner = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="use `await` there instead"):
            run_sync(inner)
        return inspect.getcoroutinestate(inner)

    assert run_sync(nested()) == inspect.CORO_CLOSED


def test_system_exit_in_the_work_does_not_kill_the_loop():
    """SystemExit raised by the work reaches the caller; the loop keeps serving calls."""

    async def exits() -> None:
        raise SystemExit(3)

    loop_before = background_loop()
    with pytest.raises(SystemExit):
        run_sync(exits())
    assert run_sync(_add(2, 2)) == 4
    assert background_loop() is loop_before


def test_shutdown_is_idempotent_and_run_sync_starts_a_new_loop():
    """After shutdown (twice) the old loop is closed and run_sync works on a new one."""
    first = background_loop()
    shutdown_background_loop()
    shutdown_background_loop()
    assert first.is_closed()
    assert run_sync(_add(1, 1)) == 2
    assert background_loop() is not first


@pytest.mark.timeout(30)
def test_shutdown_releases_a_caller_waiting_in_another_thread():
    """A run_sync blocked in another thread gets an error at shutdown instead of hanging."""
    started = threading.Event()
    errors: list[BaseException] = []

    async def wait_forever() -> None:
        started.set()
        await asyncio.sleep(60)

    def caller() -> None:
        try:
            run_sync(wait_forever())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=caller, daemon=True)
    thread.start()
    assert started.wait(10)
    shutdown_background_loop()
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], asyncio.CancelledError)


@pytest.mark.timeout(30)
def test_on_poll_is_called_from_the_caller_while_waiting():
    """on_poll runs in the calling thread, repeatedly, while the work is still running."""

    async def make_event() -> asyncio.Event:
        return asyncio.Event()

    released = run_sync(make_event())
    loop = background_loop()
    poll_threads: list[threading.Thread] = []

    def on_poll() -> None:
        poll_threads.append(threading.current_thread())
        if len(poll_threads) == 3:
            loop.call_soon_threadsafe(released.set)

    async def wait_until_released() -> str:
        await released.wait()
        return "released"

    assert run_sync(wait_until_released(), on_poll=on_poll) == "released"
    assert len(poll_threads) >= 3
    assert set(poll_threads) == {threading.current_thread()}


def test_failing_on_poll_is_disabled_and_the_run_completes():
    """An on_poll that raises is called once, then dropped; the result still arrives."""
    calls: list[int] = []

    def broken_on_poll() -> None:
        calls.append(1)
        raise ValueError("display broke")

    async def slow_add() -> int:
        await asyncio.sleep(0.3)
        return 7

    assert run_sync(slow_add(), on_poll=broken_on_poll) == 7
    assert calls == [1]


def test_failing_on_poll_is_logged_once_at_debug(caplog):
    """The on_poll failure is logged once, at debug level, with its traceback."""

    def broken_on_poll() -> None:
        raise ValueError("display broke")

    with caplog.at_level(logging.DEBUG, logger="minima_nb.engine.sync"):
        run_sync(_add(1, 1), on_poll=broken_on_poll)
    records = [r for r in caplog.records if "on_poll" in r.getMessage()]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG
    assert records[0].exc_info is not None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_its_own_working_loop():
    """After fork the child makes a new private loop and run_sync works there."""
    result = _run_python(
        """
        import asyncio, os, signal
        from minima_nb.engine.loop import background_loop
        from minima_nb.engine.sync import run_sync

        parent_loop = background_loop()
        assert run_sync(asyncio.sleep(0, "parent")) == "parent"
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)  # a hung child must not outlive the test
            try:
                ok = (background_loop() is not parent_loop
                      and run_sync(asyncio.sleep(0, "child")) == "child")
            except BaseException:
                ok = False
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), run_sync(asyncio.sleep(0, "after")))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "after"]


# -- which loop the private thread runs on (uvloop when installed; MINIMA_UVLOOP=0: asyncio's) --


def _generate_on_private_loop(srv, prompts: list[str]) -> tuple[list[str], asyncio.AbstractEventLoop]:
    """A real df.minima.generate against ``srv`` (cache off); the answers and the loop that ran it."""
    import pandas as pd
    from _mock_backend import close_backend, make_backend

    import minima_nb  # noqa: F401  - registers the accessor

    llm = make_backend(srv, None)
    try:
        answers = pd.DataFrame({"prompt": prompts}).minima.generate("prompt", backend=llm, progress=False)
        loop = run_sync(_running_loop())
    finally:
        close_backend(llm)
    return answers.tolist(), loop


@pytest.mark.parametrize("switch", ["", "1", "0", "off"])
def test_private_loop_is_uvloop_unless_minima_uvloop_says_off(srv, monkeypatch, switch):
    """With uvloop installed the batch runs on uvloop; MINIMA_UVLOOP=0 (or off) runs it on asyncio's."""
    import uvloop

    from minima_nb.engine.loop import background_loop_kind

    if switch:
        monkeypatch.setenv("MINIMA_UVLOOP", switch)
    else:
        monkeypatch.delenv("MINIMA_UVLOOP", raising=False)
    prompts = [f"loop question {i}" for i in range(40)]
    answers, loop = _generate_on_private_loop(srv, prompts)
    on_uvloop = switch not in ("0", "off")
    assert isinstance(loop, uvloop.Loop) is on_uvloop
    assert background_loop_kind() == ("uvloop" if on_uvloop else "asyncio")
    assert all(isinstance(a, str) and a for a in answers)
    assert srv.requests_total == len(prompts)


def test_both_loops_give_the_same_answers(srv, monkeypatch):
    """The loop is an implementation detail: the same prompts give the same answers on either."""
    prompts = [f"same on both {i}" for i in range(30)]
    monkeypatch.setenv("MINIMA_UVLOOP", "0")
    on_asyncio, loop = _generate_on_private_loop(srv, prompts)
    assert type(loop).__module__.startswith("asyncio")
    shutdown_background_loop()
    monkeypatch.setenv("MINIMA_UVLOOP", "1")
    on_uvloop, loop = _generate_on_private_loop(srv, prompts)
    assert type(loop).__module__.startswith("uvloop")
    assert on_uvloop == on_asyncio
    assert srv.requests_total == 2 * len(prompts)


def test_uvloop_private_loop_inside_a_running_asyncio_loop(monkeypatch):
    """In a kernel cell (an asyncio loop running in the caller's thread) the private thread
    still gets uvloop, and the kernel's loop stays asyncio's own."""
    import uvloop

    monkeypatch.delenv("MINIMA_UVLOOP", raising=False)

    async def kernel_cell() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop, int]:
        return asyncio.get_running_loop(), run_sync(_running_loop()), run_sync(_add(2, 3))

    outer, private, total = asyncio.run(kernel_cell())
    assert isinstance(private, uvloop.Loop)
    assert not isinstance(outer, uvloop.Loop)
    assert total == 5


def test_without_uvloop_the_private_loop_is_asyncios():
    """uvloop missing (the package without the `fast` extra) is not an error: asyncio's loop."""
    result = _run_python(
        """
        import sys
        sys.modules["uvloop"] = None  # what an interpreter without uvloop sees: ImportError
        import asyncio
        from minima_nb.engine.loop import background_loop_kind
        from minima_nb.engine.sync import run_sync

        async def which():
            await asyncio.sleep(0.01)
            return type(asyncio.get_running_loop()).__module__

        print(background_loop_kind(), run_sync(which()))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["asyncio", "asyncio.unix_events"]
