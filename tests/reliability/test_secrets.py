"""The API key goes to the configured host and nowhere else: not to files, logs, reprs, errors or redirects.

Every test runs with a recognisable random key (``sk-LEAKCHECK-<hex>``) and then looks for its
random part in everything a user can see or keep: files written (cache, WAL, trace file, Parquet,
executed notebook), subprocess output, log records, warnings, reprs, exception messages and
tracebacks, and pickles (Dask ships configs and results between processes). The mock server's
``echo_credentials`` mode quotes the received Authorization header in every error body, as some
servers and proxies do, so the masking of server messages is exercised on every error path.
"""

from __future__ import annotations

import logging
import pickle
import secrets
import subprocess
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import ipykernel.kernelspec
import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from minima_nb import (
    BatchAborted,
    MinimaLlmFailure,
    OpenAIMinimaLlm,
    run_sync,
)
from minima_nb.config import ENV_VARS
from minima_nb.export import open_cache
from minima_nb.testing import MockServer

from ._support import REPO_ROOT, ask, fast_config, generate, run_batch, subprocess_env

SECRET = secrets.token_hex(12)
KEY = f"sk-LEAKCHECK-{SECRET}"
NOTEBOOK = REPO_ROOT / "notebooks" / "01_quickstart.ipynb"


def leaked(*texts: Any) -> list[str]:
    """The texts (str or bytes) that contain the key's random part, shortened for the report."""
    hits = []
    for text in texts:
        data = text if isinstance(text, bytes) else str(text).encode("utf-8", "replace")
        if SECRET.encode() in data:
            hits.append(data[:300].decode("utf-8", "replace"))
    return hits


def leaked_files(root: Path) -> list[str]:
    """Every file under ``root`` whose bytes contain the key's random part."""
    return [str(p) for p in sorted(root.rglob("*")) if p.is_file() and SECRET.encode() in p.read_bytes()]


def exception_views(exc: BaseException) -> list[Any]:
    """What a user may see of an exception: str, repr, the printed traceback, its pickle."""
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc)), pickle.dumps(exc)]


class RecordingSink:
    """A progress sink that keeps every snapshot (their reprs are scanned too)."""

    def __init__(self) -> None:
        self.snapshots: list[Any] = []

    def update(self, snapshot: Any) -> None:
        self.snapshots.append(snapshot)

    def draw(self) -> None:
        pass

    def close(self, status: str = "done") -> None:
        self.snapshots.append(status)


def env_with_key(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A subprocess environment whose only OPENAI_* setting is the key."""
    env = subprocess_env(OPENAI_API_KEY=KEY, MINIMA_TRACE_FILE=str(tmp_path / "trace.jsonl"), **extra)
    for var, _, _ in ENV_VARS:
        if var not in ("OPENAI_API_KEY", "MINIMA_TRACE_FILE") and var not in extra:
            env.pop(var, None)
    return env


# -- the demo -------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_demo_leaks_no_key(tmp_path):
    """`python -m minima_nb.cli.demo` with the key set: its output, cache and trace file hold no trace of the key."""
    proc = subprocess.run(
        [sys.executable, "-m", "minima_nb.cli.demo", "--rows", "50", "--latency-ms", "1",
         "--cache-dir", str(tmp_path / "demo-cache")],
        env=env_with_key(tmp_path), capture_output=True, timeout=100, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (tmp_path / "demo-cache" / "minima_llm.db").exists() and (tmp_path / "trace.jsonl").exists()
    assert leaked(proc.stdout, proc.stderr) == []
    assert leaked_files(tmp_path) == []


# -- a batch that meets every kind of failure ------------------------------------------------------

ROW_FAULTS = {
    "leak 400": ["400"], "leak 404": ["404"], "leak 413": ["413"], "leak 422": ["422"],
    "leak 500": ["500", "500"], "leak 503": ["503", "503"], "leak 429": ["429", "429"],
    "leak timeout": ["timeout", "timeout"], "leak drop": ["drop", "drop"],
    "leak malformed": ["malformed", "malformed"], "leak null": ["null", "null"],
}


def script_row_faults(srv: MockServer) -> None:
    for prompt, faults in ROW_FAULTS.items():
        srv.script(prompt, faults)


@pytest.mark.timeout(60)
def test_batch_with_failures_leaks_no_key(tmp_path, caplog, capsys):
    """Failures of every kind (server errors echoing the key included): no key in results, errors, logs, files or pickles."""
    caplog.set_level(logging.DEBUG)
    seen: list[Any] = []
    prompts = [*ROW_FAULTS, *(f"leak ok {i}" for i in range(20))]
    # ratelimit_headers=False: the scripted 429s carry Retry-After only, not a made-up 60 rpm limit.
    with MockServer(echo_credentials=True, timeout_delay_s=5.0, ratelimit_headers=False) as srv, \
            warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        config = fast_config(srv.base_url, api_key=KEY, cache_dir=str(tmp_path / "cache"),
                             trace_file=str(tmp_path / "trace.jsonl"), timeout_s=0.3, max_attempts=2)
        backend = OpenAIMinimaLlm(config)
        sink = RecordingSink()

        script_row_faults(srv)
        frame = pd.DataFrame({"prompt": prompts})
        answers = frame.minima.generate("prompt", backend=backend, progress="text")
        script_row_faults(srv)
        details = frame.minima.generate("prompt", backend=backend, details=True, progress=sink,
                                        force_refresh=True)
        script_row_faults(srv)
        results = run_batch(backend, [ask(p) for p in prompts], force_refresh=True)
        srv.script("leak single", ["401"])
        single = generate(backend, ask("leak single"))
        key_was_sent = srv.last_request_headers.get("Authorization") == f"Bearer {KEY}"
        assert leaked(srv.last_request_headers) != []  # the detector sees the key where it belongs
        seen += [repr(config), str(config), config.describe(), repr(backend), repr(backend.cache),
                 backend.pacer.describe(), backend.cache_stats(), repr(srv), pickle.dumps(config)]
        run_sync(backend.aclose())
        backend.close()

    failures = [r for r in results if isinstance(r, MinimaLlmFailure)]
    assert key_was_sent and len(failures) == len(ROW_FAULTS) and isinstance(single, MinimaLlmFailure)
    assert any("[redacted]" in f.message for f in failures)  # the server did echo the key
    out = capsys.readouterr()
    seen += [*results, single, pickle.dumps(results), pickle.dumps(single), answers.to_csv(),
             details.to_csv(), repr(details), *sink.snapshots, out.out, out.err, caplog.text,
             *(f"{w.category.__name__}: {w.message}" for w in warned)]
    assert leaked(*seen) == []
    assert leaked_files(tmp_path) == []


@pytest.mark.parametrize("fault", ["401", "403", "quota"])
@pytest.mark.timeout(30)
def test_aborted_batch_leaks_no_key(fault, tmp_path, caplog):
    """A batch stopped by 401/403/quota (server echoing the key): BatchAborted and its partial results hold no key."""
    caplog.set_level(logging.DEBUG)
    with MockServer(echo_credentials=True, fault_rate=1.0, fault_kinds=(fault,)) as srv:
        backend = OpenAIMinimaLlm(fast_config(srv.base_url, api_key=KEY, cache_dir=str(tmp_path),
                                              batch={"max_failures": 25}))
        with pytest.raises(BatchAborted) as caught:
            run_batch(backend, [ask(f"abort {i}") for i in range(50)])
        frame = pd.DataFrame({"prompt": [f"abort {i}" for i in range(50)]})
        with pytest.raises(BatchAborted) as caught_frame:
            frame.minima.generate("prompt", backend=backend, progress=False)
        run_sync(backend.aclose())
        backend.close()

    assert "[redacted]" in str(caught.value) or "redacted" in repr(caught.value.results)
    partial = getattr(caught_frame.value, "partial", None)
    seen = [*exception_views(caught.value), *exception_views(caught_frame.value),
            *caught.value.results, repr(partial), caplog.text]
    assert leaked(*seen) == []
    assert leaked_files(tmp_path) == []


# -- exports --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_exports_and_cache_cli_leak_no_key(tmp_path):
    """A cache filled with the key in use, exported to Parquet, read back, and shown by `minima-nb cache`: no key."""
    cache_dir = tmp_path / "cache"
    with MockServer(echo_credentials=True) as srv:
        backend = OpenAIMinimaLlm(fast_config(srv.base_url, api_key=KEY, cache_dir=str(cache_dir)))
        run_batch(backend, [ask(f"export {i}") for i in range(30)])
        backend.close()
    with open_cache(cache_dir) as cache:
        cache.to_parquet(tmp_path / "export.parquet")
        frame = cache.to_pandas()
        stats = cache.stats()
    cli = [sys.executable, "-m", "minima_nb.cli", "cache"]
    runs = [subprocess.run([*cli, *args], env=env_with_key(tmp_path), capture_output=True, timeout=60)
            for args in (["stats", str(cache_dir)],
                         ["export", str(cache_dir), str(tmp_path / "cli.parquet")],
                         ["import", str(cache_dir), str(tmp_path / "export.parquet")])]
    assert [r.returncode for r in runs] == [0, 0, 0], [r.stderr.decode() for r in runs]
    assert len(frame) == 30 and (tmp_path / "cli.parquet").exists()
    assert leaked(frame.to_csv(), repr(frame), stats, *(r.stdout + r.stderr for r in runs)) == []
    assert leaked_files(tmp_path) == []


# -- notebooks ------------------------------------------------------------------------------------

AUDIT_CELL = """\
import os
print("key sent:", server.last_request_headers.get("Authorization") == "Bearer " + os.environ["OPENAI_API_KEY"])
print(repr(backend), backend.config, backend.config.describe(), backend.cache, sep="\\n")
backend"""


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory):
    """A JUPYTER_PATH whose "python3" kernel is this interpreter."""
    prefix = tmp_path_factory.mktemp("jupyter")
    ipykernel.kernelspec.install(kernel_name="python3", prefix=str(prefix))
    return prefix / "share" / "jupyter"


@pytest.mark.timeout(180)
def test_quickstart_notebook_leaks_no_key(tmp_path, jupyter_path, monkeypatch):
    """The quickstart notebook run with the key set: outputs, widget state, cache and trace file hold no key."""
    for var, _, _ in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("MINIMA_TRACE_FILE", str(tmp_path / "trace.jsonl"))
    monkeypatch.setenv("MINIMA_NB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(new_code_cell(AUDIT_CELL))
    client = NotebookClient(nb, timeout=120, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    executed = nbformat.writes(nb)
    (tmp_path / "executed.ipynb").write_text(executed, encoding="utf-8")

    assert "key sent: True" in executed
    assert (tmp_path / "cache" / "minima_llm.db").exists() and (tmp_path / "trace.jsonl").exists()
    assert leaked(executed) == []
    assert leaked_files(tmp_path) == []


# -- redirects ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def elsewhere():
    """The host a redirect points at: another address (127.0.0.2) when it can be bound."""
    try:
        server = MockServer(host="127.0.0.2").start()
    except OSError:
        server = MockServer().start()  # another port on 127.0.0.1
    yield server
    server.stop()


@pytest.mark.parametrize("transport", ["http1", "aiohttp", "httpx"])
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_to_another_host_never_receives_the_key(status, transport, elsewhere):
    """A redirect to another host is not followed: that host gets no request (so no key), the row fails clearly."""
    elsewhere.reset_counts()
    target = elsewhere.base_url + "/chat/completions"
    with MockServer(redirect_to=target, redirect_status=status) as srv:
        backend = OpenAIMinimaLlm(fast_config(srv.base_url, api_key=KEY, transport=transport,
                                              max_attempts=3))
        result = generate(backend, ask("follow me"))
        asked_here = srv.requests_total
    assert elsewhere.requests_total == 0 and elsewhere.last_request_headers == {}
    assert isinstance(result, MinimaLlmFailure) and result.status == status
    assert asked_here == 1  # not retried either: it would redirect again
    assert f"redirected (HTTP {status})" in result.message and "base_url" in result.message
    assert leaked(result) == []

