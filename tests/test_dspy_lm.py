"""MinimaLlmDSPyLM: the predecessor's DSPy example on minima_nb, against the embedded mock server.

Real dspy 3.4 drives the LM over its supported engine interface; the mock answers DSPy's chat
format. No network beyond 127.0.0.1 (a socket guard), no DeprecationWarning, no ~/.dspy_cache.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import warnings
from pathlib import Path

import dspy
import pytest
from _dspy_support import QA, guarded_subprocess_env, loopback_only
from _mock_backend import close_backend, make_backend

from minima_nb.dspy_adapter import MinimaLlmDSPyLM

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.fixture
def lm(backend):
    """The DSPy LM on the cached mock backend, used through dspy.context (never configured)."""
    with loopback_only() as refused, warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        yield MinimaLlmDSPyLM(backend)
    assert refused == []
    assert "cache" not in vars(dspy), "DSPy's own cache was built"


def _readme_example() -> str:
    return re.search(r"<!-- dspy-example -->\n```python\n(.*?)```", README, re.S).group(1)


def test_readme_example_runs_offline_without_warnings_or_dspy_cache(srv, tmp_path):
    """The README's DSPy example (async acall, then a sync call) in a script: answers, nothing else."""
    script = tmp_path / "example.py"
    script.write_text(_readme_example() + "import sys\nprint('litellm loaded:', 'litellm' in sys.modules)\n")
    env, home = guarded_subprocess_env(
        tmp_path, OPENAI_BASE_URL=srv.base_url, OPENAI_MODEL="mock-model",
        CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", str(script)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "answer for: What is the capital of France?", "4", "litellm loaded: False"]
    assert not (tmp_path / "net.log").exists(), (tmp_path / "net.log").read_text()
    assert not (home / ".dspy_cache").exists()
    assert srv.requests_total == 2


def test_async_and_sync_calls_answer_through_the_backend(lm, srv):
    """acall, and a sync call both from plain code and from inside a running event loop."""
    cot = dspy.ChainOfThought(QA)
    with dspy.context(lm=lm):
        first = asyncio.run(cot.acall(question="What is 2+2?"))
        assert (first.reasoning, first.answer) == ("Considering: What is 2+2?", "4")
        assert dspy.Predict(QA)(question="Capital of France?").answer == "Paris"

        async def sync_inside_a_loop():
            return dspy.Predict(QA)(question="What is 2+2?").answer  # as in a Jupyter cell

        assert asyncio.run(sync_inside_a_loop()) == "4"
    assert srv.requests_total == 3


def test_dspy_cache_and_retries_are_off(lm, backend):
    """minima_nb owns caching and retries: the LM says so, and refuses to switch DSPy's on."""
    assert isinstance(lm, dspy.BaseLM) and isinstance(lm, dspy.LM)
    assert (lm.cache, lm.num_retries, lm.model) == (False, 0, "mock-model")
    for setting in ({"cache": True}, {"num_retries": 2}):
        with pytest.raises(ValueError, match="minima_nb"):
            MinimaLlmDSPyLM(backend, **setting)


def test_settings_merge_in_dspy_order_and_dspy_keys_stay_off_the_wire(srv, backend):
    """LM, then Predict config, then the call's config; rollout_id never reaches the server."""
    lm = MinimaLlmDSPyLM(backend, temperature=0.3, max_tokens=100, top_p=0.9)
    with dspy.context(lm=lm):
        dspy.Predict(QA, max_tokens=50)(question="q1")
        sent = srv.last_request_json
        assert (sent["temperature"], sent["max_tokens"], sent["top_p"]) == (0.3, 50, 0.9)
        dspy.Predict(QA, max_tokens=50)(question="q2", config={"temperature": 0.7, "rollout_id": 4})
        sent = srv.last_request_json
    assert (sent["temperature"], sent["max_tokens"]) == (0.7, 50)
    assert set(sent) == {"model", "messages", "temperature", "max_tokens", "top_p"}
    assert sent["model"] == "mock-model"
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]


def test_history_says_cached_and_usage_counts_only_billed_tokens(lm, srv):
    """A cache hit reports empty usage; lm.history says which answers were cached."""
    with dspy.context(lm=lm), dspy.track_usage() as usage:
        dspy.Predict(QA)(question="What is 2+2?")
        billed = usage.get_total_tokens()
        dspy.Predict(QA)(question="What is 2+2?")  # the same prompt: from minima_nb's cache
        assert usage.get_total_tokens() == billed
    assert billed["mock-model"]["prompt_tokens"] > 0 and billed["mock-model"]["completion_tokens"] > 0
    minima = [entry["response"].provider_data["minima"] for entry in lm.history]
    assert [m["cached"] for m in minima] == [False, True]
    assert [m["attempts"] for m in minima] == [1, 0]
    assert srv.requests_total == 1


def test_lm_copy_keeps_the_backend_and_changes_the_wire_model(lm, srv):
    """lm.copy(model=...) sends that model through the same backend."""
    other = lm.copy(model="mock-model-large")
    with dspy.context(lm=other):
        dspy.Predict(QA)(question="q")
    assert srv.last_request_json["model"] == "mock-model-large"
    assert other.backend is lm.backend


def test_a_backend_without_cache_still_answers(srv, tmp_path):
    """No cache_dir: every call is sent, usage counts every call."""
    backend = make_backend(srv, None)
    try:
        with dspy.context(lm=MinimaLlmDSPyLM(backend)):
            dspy.Predict(QA)(question="q")
            dspy.Predict(QA)(question="q")
    finally:
        close_backend(backend)
    assert srv.requests_total == 2


def test_without_dspy_the_import_says_what_to_install():
    """`import minima_nb.dspy_adapter` with DSPy missing names the extra; minima_nb itself imports."""
    code = ("import sys\nsys.modules['dspy'] = None  # as if DSPy were not installed\n"
            "import minima_nb\n"
            "try:\n    import minima_nb.dspy_adapter\nexcept ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'minima-nb[dspy]'" in out.stdout


def test_minima_llm_dspy_usage_example_runs_with_the_imports_changed(srv, tmp_path):
    """examples/dspy_usage.py from minima-llm 0.2.8's wheel, `minima_llm` -> `minima_nb`, on the mock."""
    import importlib.resources

    source = importlib.resources.files("minima_llm").joinpath("examples/dspy_usage.py").read_text()
    assert source.count("from minima_llm") == 2
    script = tmp_path / "dspy_usage.py"
    script.write_text(source.replace("from minima_llm", "from minima_nb"))
    env, home = guarded_subprocess_env(
        tmp_path, OPENAI_BASE_URL=srv.base_url, OPENAI_MODEL="mock-model", RPM="0",
        CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", str(script)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    answers = [line for line in out.stdout.splitlines() if line.startswith("A: ")]
    # The mock answers arithmetic it can do, and echoes the rest.
    assert answers == ["A: answer for: What is the capital of France?", "A: 4", "A: answer for: Who wrote Hamlet?"]
    assert not (tmp_path / "net.log").exists() and not (home / ".dspy_cache").exists()
    assert srv.requests_total == 3
