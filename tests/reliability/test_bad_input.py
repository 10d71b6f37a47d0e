"""Bad input: each mistake gets an error that names the problem and the fix, and the cache survives it.

``RAISING`` lists the inputs that must raise: the exception type and the words its message must
contain (the problem, and the setting or action that fixes it). ``ROW_OUTCOMES`` lists the inputs
that are not the caller's bug but a row's (a missing prompt, a prompt the server refuses, a server
that is not there): those rows come back as ``<NA>`` with the reason in ``details=True``, and the
other rows are answered. After every case, the rows already in the cache are unchanged and the
file passes ``PRAGMA integrity_check``. make_table.py turns both lists into the README table.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import socket
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from minima_nb import (
    BatchAborted,
    CacheError,
    ConfigError,
    MinimaLlmConfig,
    MinimaLlmRequest,
    OpenAIMinimaLlm,
    run_sync,
)
from minima_nb.export import open_cache
from minima_nb.testing import MockServer

from ._support import ask, db_path, expected, fast_config, integrity, run_batch, stored_rows

LIBRARY_NAMES = ("aiohttp", "httpx", "ClientConnectorError", "ConnectError(", "sqlite3.", "pyarrow.lib")
MAX_BODY_BYTES = 20_000
GOOD = "What is 2+2?"  # the one good prompt of a mixed frame
HUGE = "word " * MAX_BODY_BYTES
Ask = tuple[pd.DataFrame, pd.DataFrame]  # (the frame asked, its details=True answer)
PRIMED = [f"kept answer {i}" for i in range(12)]


class Env:
    """One case's world: the mock server, a cache already holding PRIMED, a backend on both."""

    def __init__(self, srv: MockServer, tmp_path: Path) -> None:
        self.srv, self.tmp_path = srv, tmp_path
        self.cache_dir = tmp_path / "cache"
        self.backend = OpenAIMinimaLlm(fast_config(srv.base_url, cache_dir=str(self.cache_dir)))
        run_batch(self.backend, [ask(p) for p in PRIMED])
        self.backend.cache.flush()
        self.snapshot = stored_rows(self.cache_dir)
        self.untouched: dict[Path, bytes] = {}  # files a case must leave byte for byte

    def frame(self, **columns: list[Any]) -> pd.DataFrame:
        return pd.DataFrame(columns or {"prompt": ["What is 2+2?"]})

    def generate(self, frame: pd.DataFrame, prompt: str = "prompt", **options: Any) -> Any:
        return frame.minima.generate(prompt, backend=self.backend, progress=False, **options)

    def keep(self, path: Path, data: bytes) -> Path:
        """Write ``data`` to ``path`` and remember that the case must not change it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.untouched[path] = data
        return path


@dataclass(frozen=True)
class BadInput:
    """One bad input: what it is, what must happen, and how the test produces it."""

    name: str
    what: str
    outcome: str
    mentions: tuple[str, ...]
    run: Callable[[Env], Any]
    error: type[BaseException] | None = None
    bug: str | None = None  # a known defect: the case is xfail(strict=True) with this reason


RAISING: list[BadInput] = []
ROW_OUTCOMES: list[BadInput] = []


def raising(what: str, error: type[BaseException], *mentions: str, bug: str | None = None):
    """Register a case that must raise ``error`` with every one of ``mentions`` in its message."""

    def register(run: Callable[[Env], Any]) -> Callable[[Env], Any]:
        RAISING.append(BadInput(run.__name__, what, error.__name__, mentions, run, error, bug))
        return run

    return register


def row_outcome(what: str, outcome: str, *mentions: str):
    """Register a case whose bad rows come back <NA>, with ``mentions`` in their details error."""

    def register(run: Callable[[Env], Any]) -> Callable[[Env], Any]:
        ROW_OUTCOMES.append(BadInput(run.__name__, what, outcome, mentions, run))
        return run

    return register


def ask_nowhere(transport: str) -> Ask:
    """Three prompts sent to a port where nothing listens, through ``transport``."""
    backend = OpenAIMinimaLlm(fast_config(refused_url(), max_attempts=2, transport=transport))
    frame = pd.DataFrame({"prompt": ["one", "two", "three"]})
    try:
        return frame, frame.minima.generate("prompt", backend=backend, details=True, progress=False)
    finally:
        run_sync(backend.aclose())  # see test_failed_connection_leaves_no_unclosed_session_noise


def refused_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens (the port was just free)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# -- inputs that raise ----------------------------------------------------------------------------


@raising("a column name that is not in the frame", KeyError,
         "'answer_me' is not a column", "available columns", "template")
def missing_column(env: Env) -> Any:
    return env.generate(env.frame(), "answer_me")


@raising("a prompt that is neither a string nor a message list (an int)", TypeError,
         "row 1", "must be a string or a list of chat messages")
def non_string_prompt(env: Env) -> Any:
    return env.generate(env.frame(prompt=["What is 2+2?", 42]))


@raising("a chat message without a role", ValueError, "row 0", "message 0 has no 'role'")
def message_without_role(env: Env) -> Any:
    return env.generate(env.frame(prompt=[[{"content": "hi"}]]))


@raising("a message list holding a bare string", TypeError, "row 0", "message 0 must be a dict")
def message_not_a_dict(env: Env) -> Any:
    return env.generate(env.frame(prompt=[["hi"]]))


@raising("a request whose messages is a string, not a list", TypeError,
         "'r1'", "messages must be a list of")
def request_messages_is_a_string(env: Env) -> Any:
    return asyncio.run(env.backend.generate(MinimaLlmRequest("r1", "hello")))


@raising("a request with an empty message list", ValueError, "'r1'", "messages is empty")
def request_messages_empty(env: Env) -> Any:
    return run_batch(env.backend, [MinimaLlmRequest("r1", [])])


@raising("a template naming a missing column", KeyError,
         "template field {question} is not a column", "available columns")
def template_missing_field(env: Env) -> Any:
    return env.generate(env.frame(text=["a"]), "Answer: {question}")


@raising("a template with an unclosed brace", ValueError, "is malformed", "{{ and }}")
def template_malformed(env: Env) -> Any:
    return env.generate(env.frame(text=["a"]), "Answer {text} {")


@raising("an invalid config value (timeout_s=0)", ConfigError, "timeout_s=0", "TIMEOUT_S")
def config_value_invalid(env: Env) -> Any:
    return fast_config(env.srv.base_url, timeout_s=0)


@raising("a misspelt setting (timout_s)", ConfigError, "unknown setting(s) timout_s", "timeout_s")
def config_setting_misspelt(env: Env) -> Any:
    return MinimaLlmConfig.from_dict({"base_url": env.srv.base_url, "model": "m", "timout_s": 5})


@raising("a non-number in the environment (RPM=fast)", ConfigError, "RPM='fast'", "number")
def config_env_not_a_number(env: Env) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RPM", "fast")
        return MinimaLlmConfig.from_env(base_url=env.srv.base_url, model="m")


@raising("a base URL without a scheme", ConfigError, "needs a scheme and a host", "OPENAI_BASE_URL")
def base_url_without_scheme(env: Env) -> Any:
    return fast_config("127.0.0.1:8000/v1")


@raising("random bytes in minima_llm.db", CacheError,
         "is not a SQLite database", "move that file away", "cache_dir")
def cache_file_random_bytes(env: Env) -> Any:
    directory = env.tmp_path / "garbage"
    env.keep(db_path(directory), random.Random(1).randbytes(64 * 1024))
    return OpenAIMinimaLlm(fast_config(env.srv.base_url, cache_dir=str(directory)))


@raising("a cache file damaged inside (valid header, garbled pages)", CacheError,
         "minima_llm.db", "malformed", "move it away", "cache_dir")
def cache_file_damaged_pages(env: Env) -> Any:
    directory = env.tmp_path / "damaged"
    requests = [ask(f"to be damaged {i} " + "x" * 300) for i in range(400)]
    damaged = OpenAIMinimaLlm(fast_config(env.srv.base_url, cache_dir=str(directory)))
    run_batch(damaged, requests)
    damaged.close()
    data = bytearray(db_path(directory).read_bytes())
    rng = random.Random(2)
    for offset in range(4096 * 3, len(data) - 4096, 4096 * 5):
        data[offset:offset + 512] = rng.randbytes(512)
    env.keep(db_path(directory), bytes(data))
    assert integrity(directory) != "ok"
    again = OpenAIMinimaLlm(fast_config(env.srv.base_url, cache_dir=str(directory)))
    try:
        return run_batch(again, requests)  # the user runs the same batch again
    finally:
        again.close()


@raising("cache_dir is an existing regular file", CacheError, "is not a directory", "cache_dir")
def cache_dir_is_a_file(env: Env) -> Any:
    path = env.keep(env.tmp_path / "not-a-dir", b"my notes\n")
    return OpenAIMinimaLlm(fast_config(env.srv.base_url, cache_dir=str(path)))


@raising("cache_dir below a regular file (cannot be created)", CacheError,
         "cannot create the cache directory", "cache_dir")
def cache_dir_under_a_file(env: Env) -> Any:
    path = env.keep(env.tmp_path / "plain-file", b"my notes\n")
    return OpenAIMinimaLlm(fast_config(env.srv.base_url, cache_dir=str(path / "cache")))


@raising("a Parquet file of another schema, imported", CacheError,
         "lacks the column(s)", "expected a minima_nb cache export")
def parquet_wrong_schema(env: Env) -> Any:
    path = env.tmp_path / "other.parquet"
    pq.write_table(pa.table({"question": ["q"], "answer": ["a"]}), path)
    env.untouched[path] = path.read_bytes()
    with open_cache(env.cache_dir) as cache:
        return cache.from_parquet(path)


@raising("a Parquet export whose text column is not text", CacheError,
         "column text of type int64", "expected a minima_nb cache export")
def parquet_wrong_column_type(env: Env) -> Any:
    path = env.tmp_path / "typed.parquet"
    columns = {"key": ["k"], "model": ["m"], "messages": ["[]"], "params": ["{}"], "text": [1]}
    pq.write_table(pa.table(columns), path)
    env.untouched[path] = path.read_bytes()
    with open_cache(env.cache_dir) as cache:
        return cache.from_parquet(path)


@raising("a file that is not Parquet at all, imported", CacheError, "is not a readable Parquet file")
def parquet_not_parquet(env: Env) -> Any:
    path = env.keep(env.tmp_path / "notes.parquet", b"just some text\n")
    with open_cache(env.cache_dir) as cache:
        return cache.from_parquet(path)


# -- inputs that fail only their rows ------------------------------------------------------------


@row_outcome("NaN, None, empty and blank prompts", "row <NA>, not sent", "missing prompt")
def missing_prompts(env: Env) -> Ask:
    frame = env.frame(prompt=[GOOD, None, float("nan"), "", "   "])
    return frame, env.generate(frame, details=True)


@row_outcome("a prompt larger than the server accepts (HTTP 413)",
             "row <NA>, ClientError, not retried", "HTTP 413", "Request too large")
def huge_prompt(env: Env) -> Ask:
    frame = env.frame(prompt=[GOOD, HUGE])
    return frame, env.generate(frame, details=True)


@raising("a base URL where nothing listens (http1, the default)", BatchAborted,
         "has not answered a single request", "cannot connect to http://127.0.0.1:",
         "Connection refused", "base_url (OPENAI_BASE_URL)")
def refused_connection_http1(env: Env) -> Any:
    return ask_nowhere("http1")


@raising("a base URL where nothing listens (aiohttp)", BatchAborted,
         "has not answered a single request", "cannot connect to http://127.0.0.1:",
         "Connection refused", "base_url (OPENAI_BASE_URL)")
def refused_connection_aiohttp(env: Env) -> Any:
    return ask_nowhere("aiohttp")


@raising("a base URL where nothing listens (httpx)", BatchAborted,
         "has not answered a single request", "cannot connect to http://127.0.0.1:",
         "base_url (OPENAI_BASE_URL)")
def refused_connection_httpx(env: Env) -> Any:
    return ask_nowhere("httpx")


# -- the tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv():
    with MockServer(max_body_bytes=MAX_BODY_BYTES) as server:
        yield server


@pytest.fixture
def env(srv, tmp_path):
    world = Env(srv, tmp_path)
    yield world
    world.backend.close()


def assert_nothing_damaged(env: Env) -> None:
    """Every row cached before the case is still there, unchanged; the file is sound."""
    env.backend.cache.flush()
    assert set(env.snapshot) <= set(stored_rows(env.cache_dir))
    assert integrity(env.cache_dir) == "ok"
    for path, data in env.untouched.items():
        assert path.read_bytes() == data, f"{path} was changed"


def _params(cases: list[BadInput]) -> list[Any]:
    return [pytest.param(c, id=c.name, marks=[pytest.mark.xfail(strict=True, reason=c.bug)] if c.bug else [])
            for c in cases]


@pytest.mark.parametrize("case", _params(RAISING))
@pytest.mark.timeout(60)
def test_bad_input_raises_a_clear_error_and_damages_nothing(case: BadInput, env: Env):
    """The mistake raises its documented error, whose message names the problem and the fix; the cache is intact."""
    with pytest.raises(case.error) as caught:
        case.run(env)
    message = str(caught.value)
    for words in case.mentions:
        assert words in message, f"{words!r} not in {message!r}"
    shown = "".join(traceback.format_exception_only(type(caught.value), caught.value))
    assert not [name for name in LIBRARY_NAMES if name in shown], shown
    assert_nothing_damaged(env)


@pytest.mark.parametrize("case", _params(ROW_OUTCOMES))
@pytest.mark.timeout(60)
def test_bad_row_is_na_with_its_reason_and_other_rows_are_answered(case: BadInput, env: Env):
    """The bad rows are <NA> with the reason in details; good rows are answered; the cache is intact."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "n rows failed" warning is the accessor's own test
        frame, details = case.run(env)
    good = (frame["prompt"] == GOOD).to_numpy()
    assert details["text"][good].tolist() == [expected(GOOD)] * int(good.sum())
    assert details["text"][~good].isna().all()
    for error in details["error"][~good]:
        for words in case.mentions:
            assert words in error, f"{words!r} not in {error!r}"
        assert not [name for name in LIBRARY_NAMES if name in error], error
    assert_nothing_damaged(env)


def test_missing_prompts_are_never_sent(env: Env):
    """Rows without a prompt cost nothing: the server sees only the one real prompt."""
    env.srv.reset_counts()
    missing_prompts(env)
    assert env.srv.requests_total == env.srv.requests_for(GOOD) == 1


def test_empty_frame_returns_empty_result_without_a_request(env: Env):
    """An empty frame gives an empty result and sends nothing."""
    env.srv.reset_counts()
    out = env.generate(pd.DataFrame({"prompt": pd.Series([], dtype=object)}))
    assert len(out) == 0 and env.srv.requests_total == 0
    assert_nothing_damaged(env)


def test_prompt_the_server_rejects_is_asked_once(env: Env):
    """A 413 is not retried: the server sees the huge prompt once, whatever max_attempts says."""
    env.srv.reset_counts()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        huge_prompt(env)
    assert env.srv.requests_for(HUGE) == 1
    assert env.srv.responses_by_status.get(413) == 1


@pytest.mark.timeout(60)
def test_refused_connection_stops_the_batch_with_one_clear_line(env: Env):
    """A wrong base URL ends in BatchAborted saying "cannot connect" at the first such row, no HTTP-library trace."""
    workers = 4
    backend = OpenAIMinimaLlm(fast_config(refused_url(), max_attempts=2,
                                          batch={"max_failures": 25, "num_workers": workers}))
    frame = pd.DataFrame({"prompt": [f"q {i}" for i in range(40)]})
    with pytest.raises(Exception) as caught:
        try:
            frame.minima.generate("prompt", backend=backend, progress=False)
        finally:
            run_sync(backend.aclose())
    assert type(caught.value).__name__ == "BatchAborted"
    assert "ConnectError: cannot connect to http://127.0.0.1:" in str(caught.value)
    assert "has not answered a single request" in str(caught.value)
    finished = [r for r in caught.value.results if r is not None]
    assert len(finished) <= workers  # the rows already under way, far below the budget of 25
    shown = "".join(traceback.format_exception(caught.value))
    assert not [name for name in LIBRARY_NAMES if name in shown], shown
    assert_nothing_damaged(env)


def test_failed_connection_leaves_no_unclosed_session_noise(caplog):
    """A throwaway backend that met a refused connection, once dropped, prints no "Unclosed client session"."""
    backend = OpenAIMinimaLlm(fast_config(refused_url(), max_attempts=1))
    frame = pd.DataFrame({"prompt": ["one"]})
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.ERROR, "asyncio"):
        warnings.simplefilter("always")
        with pytest.raises(BatchAborted):  # the server never answered: the batch stops at once
            frame.minima.generate("prompt", backend=backend, details=True, progress=False)
        del backend
        gc.collect()
        run_sync(asyncio.sleep(0.05))  # let the loop run any close it was handed
    noise = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [n for n in noise if "Unclosed" in n], noise
