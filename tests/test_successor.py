"""minima-llm 0.2.8's public API from minima_nb, with minima-llm's meanings (the successor issue).

The names are checked against the real minima-llm 0.2.8 installed beside us (the dev extra),
so the list cannot drift from the predecessor's ``__all__``.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import os
import pickle
import subprocess
import sys
import time

import minima_llm
import pytest
from _mock_backend import close_backend, make_backend

import minima_nb
from minima_nb import (
    BackendPulse,
    BackendStats,
    BatchAborted,
    BatchConfig,
    BatchPendingResponse,
    ConfigError,
    Cooldown,
    MinimaLlmConfig,
    MinimaLlmFailure,
    MinimaLlmRequest,
    MinimaLlmResponse,
    OpenAIMinimaLlm,
    ParasailBatchConfig,
    RpmGate,
    get_last_cached,
    reset_debug_trace,
    reset_retry_seed,
    run_batched_callable,
    run_sync,
    set_debug_trace,
    set_retry_seed,
)
from minima_nb.compat import RateLimitInfo

# Names of minima-llm's __all__ that arrive with the batch-API and proxy issues and the
# predecessor's cache face; this set only shrinks, and the successor issue closes at empty.
NOT_YET: set[str] = set()


def ask(prompt: str, **fields) -> MinimaLlmRequest:
    return MinimaLlmRequest(request_id=prompt, messages=[{"role": "user", "content": prompt}], **fields)


def test_every_public_name_of_minima_llm_is_importable_from_minima_nb():
    """Each name in minima-llm 0.2.8's __all__ is in minima_nb's __all__ and resolves."""
    missing = set(minima_llm.__all__) - set(minima_nb.__all__)
    assert missing == NOT_YET
    for name in set(minima_llm.__all__) - NOT_YET:
        assert getattr(minima_nb, name) is not None, name


# -- the batch failure budget, with minima-llm's meaning -------------------------------------------


async def _fail_some(i: int):
    return MinimaLlmFailure(request_id=f"r{i}", error_type="ServerError", message="boom") if i % 2 else i


def test_max_failures_none_never_aborts_and_zero_aborts_at_the_first():
    """None runs every row whatever fails; 0 stops at the first failure; N stops past N."""
    results = asyncio.run(run_batched_callable(list(range(20)), _fail_some,
                                               BatchConfig(max_failures=None, num_workers=1), progress=False))
    assert len(results) == 20 and sum(isinstance(r, MinimaLlmFailure) for r in results) == 10
    with pytest.raises(BatchAborted) as first:
        asyncio.run(run_batched_callable(list(range(20)), _fail_some,
                                         BatchConfig(max_failures=0, num_workers=1), progress=False))
    assert sum(isinstance(r, MinimaLlmFailure) for r in first.value.results) == 1
    with pytest.raises(BatchAborted) as third:
        asyncio.run(run_batched_callable(list(range(20)), _fail_some,
                                         BatchConfig(max_failures=2, num_workers=1), progress=False))
    assert sum(isinstance(r, MinimaLlmFailure) for r in third.value.results) == 3


def test_batch_aborted_is_the_runtime_error_minima_llm_code_catches():
    """`except RuntimeError` (minima-llm's examples) catches a batch abort."""
    with pytest.raises(RuntimeError, match="more than batch.max_failures=0"):
        asyncio.run(run_batched_callable([1], _fail_some, BatchConfig(max_failures=0), progress=False))


@pytest.mark.parametrize("value", ["ten", 2.5, [3], True])
def test_a_wrongly_typed_max_failures_is_a_config_error_naming_it(value):
    """Not a bare TypeError from a comparison: the error names the setting and its variable."""
    with pytest.raises(ConfigError, match=r"batch\.max_failures=.*BATCH_MAX_FAILURES"):
        BatchConfig(max_failures=value)


def test_max_failures_none_from_the_environment_yaml_and_strings(monkeypatch, tmp_path):
    """BATCH_MAX_FAILURES=none, YAML null and the string "none" all mean never abort."""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_MODEL", "m")
    monkeypatch.setenv("BATCH_MAX_FAILURES", "none")
    assert MinimaLlmConfig.from_env().batch.max_failures is None
    monkeypatch.setenv("BATCH_MAX_FAILURES", "7")
    assert MinimaLlmConfig.from_env().max_failures == 7
    assert MinimaLlmConfig.from_dict({"batch": {"max_failures": "none"}}).batch.max_failures is None
    yml = tmp_path / "c.yml"
    yml.write_text("base_url: http://127.0.0.1:9/v1\nmodel: m\nbatch:\n  max_failures: null\n")
    assert MinimaLlmConfig.from_yaml(yml).batch.max_failures is None


def test_first_failures_are_printed_and_the_abort_lists_the_last_ones(capsys):
    """print_first_failures lines go to stderr as they happen; the message keeps the last N."""
    cfg = BatchConfig(max_failures=5, num_workers=1, print_first_failures=2, keep_failure_summaries=3)
    with pytest.raises(BatchAborted) as info:
        asyncio.run(run_batched_callable(list(range(40)), _fail_some, cfg, progress="text"))
    printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("minima: failure")]
    assert printed == ["minima: failure 1: r1: ServerError: boom", "minima: failure 2: r3: ServerError: boom"]
    recent = info.value.message.split("Recent failures:\n", 1)[1].splitlines()
    assert recent == ["  - r7: ServerError: boom", "  - r9: ServerError: boom", "  - r11: ServerError: boom"]
    with pytest.raises(BatchAborted) as none_kept:
        asyncio.run(run_batched_callable(list(range(4)), _fail_some,
                                         BatchConfig(max_failures=0, keep_failure_summaries=0), progress=False))
    assert "Recent failures" not in none_kept.value.message


# -- config ------------------------------------------------------------------------------------------


def test_flat_batch_properties_and_with_model():
    """minima-llm's cfg.num_workers etc. read the batch settings; with_model keeps the rest."""
    cfg = MinimaLlmConfig(base_url="http://127.0.0.1:9/v1", model="a", api_key="sk-x",
                          batch=BatchConfig(num_workers=3, max_failures=None, heartbeat_s=2.0, stall_s=9.0,
                                            print_first_failures=1, keep_failure_summaries=4))
    assert (cfg.num_workers, cfg.max_failures, cfg.heartbeat_s, cfg.stall_s,
            cfg.print_first_failures, cfg.keep_failure_summaries) == (3, None, 2.0, 9.0, 1, 4)
    other = cfg.with_model("b")
    assert other.model == "b" and other.batch == cfg.batch and other.api_key == "sk-x"


def test_openai_token_is_the_fallback_key_and_compress_gzip_the_old_name(monkeypatch):
    """OPENAI_TOKEN serves when OPENAI_API_KEY is unset; the minima_nb names win when both are."""
    for var in ("OPENAI_API_KEY", "OPENAI_TOKEN", "MINIMA_COMPRESS_GZIP", "COMPRESS_GZIP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_MODEL", "m")
    monkeypatch.setenv("OPENAI_TOKEN", "sk-token")
    monkeypatch.setenv("COMPRESS_GZIP", "1")
    cfg = MinimaLlmConfig.from_env()
    assert cfg.api_key == "sk-token" and cfg.compress_gzip is True
    assert pickle.loads(pickle.dumps(cfg)).api_key == "sk-token"  # re-read where unpickled
    monkeypatch.setenv("OPENAI_API_KEY", "sk-primary")
    monkeypatch.setenv("MINIMA_COMPRESS_GZIP", "0")
    cfg = MinimaLlmConfig.from_env()
    assert cfg.api_key == "sk-primary" and cfg.compress_gzip is False


def test_name_lists_from_the_environment_yaml_and_code(monkeypatch):
    """MODEL_SYNONYMS / CACHE_LOOKUP_DIRS are comma-separated; dicts may give lists; all become tuples."""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_MODEL", "m")
    monkeypatch.setenv("MODEL_SYNONYMS", "gpt-4o, gpt-4o-2024 ,")
    monkeypatch.setenv("CACHE_LOOKUP_DIRS", "/a,/b")
    cfg = MinimaLlmConfig.from_env()
    assert cfg.model_synonyms == ("gpt-4o", "gpt-4o-2024") and cfg.cache_lookup_dirs == ("/a", "/b")
    assert MinimaLlmConfig.from_dict({"model_synonyms": ["x", "y"]}).model_synonyms == ("x", "y")
    assert MinimaLlmConfig(base_url="http://h/v1", model="m", model_synonyms="p,q").model_synonyms == ("p", "q")


def test_retry_temperature_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_MODEL", "m")
    monkeypatch.setenv("RETRY_TEMPERATURE_MAX", "0.8")
    monkeypatch.setenv("RETRY_TEMPERATURE_HALFLIFE", "2")
    cfg = MinimaLlmConfig.from_env()
    assert (cfg.retry_temperature_max, cfg.retry_temperature_halflife) == (0.8, 2.0)
    with pytest.raises(ConfigError, match="RETRY_TEMPERATURE_HALFLIFE"):
        cfg.replace(retry_temperature_halflife=0)


def test_parasail_config_from_dict_with_minima_llm_names():
    p = ParasailBatchConfig.from_dict({"llm_batch_prefix": "rubric", "max_batch_size": 10, "poll_interval_s": "5"})
    assert (p.llm_batch_prefix, p.max_batch_size, p.poll_interval_s, p.effective_prefix) == ("rubric", 10, 5.0, "rubric")
    assert ParasailBatchConfig.from_dict(None) == ParasailBatchConfig()
    with pytest.raises(ConfigError, match="parasail.max_batch_siz"):
        ParasailBatchConfig.from_dict({"max_batch_siz": 3})


# -- the refresh ramp uses the retry settings -----------------------------------------------------------


def test_forced_refresh_ramps_the_temperature_with_the_configured_curve(srv, tmp_path):
    """With no temperature asked, a refresh sends retry_temperature(round, max, halflife)."""
    llm = make_backend(srv, tmp_path, retry_temperature_max=0.8, retry_temperature_halflife=2.0)
    try:
        run_sync(llm.generate(ask("ramp")))
        sent = []
        for _ in range(3):
            run_sync(llm.generate(ask("ramp"), force_refresh=True))
            sent.append(srv.last_request_json["temperature"])
        assert sent == [round(0.8 * n / (n + 2.0), 4) for n in (1, 2, 3)]
    finally:
        close_backend(llm)


def test_a_retry_seed_set_by_the_caller_is_the_seed_a_refresh_sends(srv, tmp_path):
    llm = make_backend(srv, tmp_path, retry_temperature_max=0.0)
    token = set_retry_seed(4242)
    try:
        run_sync(llm.generate(ask("seeded"), force_refresh=True))
        assert srv.last_request_json["seed"] == 4242
        assert "temperature" not in srv.last_request_json  # the ramp is off at max 0
    finally:
        reset_retry_seed(token)
        close_backend(llm)


# -- the backend's minima-llm spellings ------------------------------------------------------------------


def test_backend_cfg_from_env_pulse_and_run_batched_callable(srv, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
    monkeypatch.setenv("OPENAI_MODEL", "mock-model")
    monkeypatch.setenv("CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("RPM", "0")
    llm = OpenAIMinimaLlm.from_env()
    try:
        assert llm.cfg is llm.config and "cache_dir" in llm.cfg.describe()
        run_sync(llm.generate(ask("once")))
        run_sync(llm.generate(ask("once")))
        pulse = llm.get_pulse()
        assert isinstance(pulse, BackendPulse) and BackendStats is BackendPulse
        assert (pulse.llm_calls, pulse.cache_hits, pulse.done) == (1, 1, 2)
        assert pulse.input_tokens > 0 and pulse.avg_latency_s > 0
        llm.reset_stats()
        assert llm.get_stats().done == 0

        async def length(r: MinimaLlmRequest):
            return len(r.messages[0]["content"])
        assert run_sync(llm.run_batched_callable([ask("ab"), ask("abcd")], length, progress=False)) == [2, 4]
    finally:
        close_backend(llm)


def test_a_failure_carries_body_snippet_timeout_and_attempt_times(srv, tmp_path):
    srv.script("flaky", ["500", "500", "400"])
    llm = make_backend(srv, tmp_path, max_attempts=5, base_backoff_s=0.01, max_backoff_s=0.02, timeout_s=7.0)
    try:
        failure = run_sync(llm.generate(ask("flaky")))
    finally:
        close_backend(llm)
    assert isinstance(failure, MinimaLlmFailure) and failure.attempts == 3
    assert "Invalid request" in failure.body_snippet and failure.timeout_s == 7.0
    assert len(failure.attempt_timestamps) == 3
    assert failure.format_attempts().startswith("[+0.0s, +") and failure.format_attempts().count("+") == 3


def test_a_response_constructs_with_minima_llm_token_fields():
    r = MinimaLlmResponse(request_id="a", text="t", cached=True, input_tokens=3, output_tokens=4)
    assert (r.input_tokens, r.output_tokens, r.cache_source) == (3, 4, None)
    assert not hasattr(BatchPendingResponse(request_id="a", cache_key="k"), "text")


# -- the advanced classes -------------------------------------------------------------------------------


def test_rpm_gate_spaces_turns_across_event_loops_and_only_lowers():
    """One gate serves several asyncio.run calls; a server limit lowers the rate, never raises it."""
    gate = RpmGate(rpm=1200)  # 50 ms apart
    began = time.monotonic()
    for _ in range(2):
        asyncio.run(gate.wait_turn())
        asyncio.run(gate.wait_turn())
    assert time.monotonic() - began >= 0.14  # three spacings after the first start
    assert gate.update_from_rate_limit(RateLimitInfo(limit_requests=10, reset_requests_s=1.0)) == 600.0
    assert gate.update_from_rate_limit(RateLimitInfo(limit_requests=100, reset_requests_s=1.0)) is None
    assert gate.effective_rpm == 600.0 and RpmGate(rpm=0).effective_rpm == 0.0


def test_cooldown_pauses_waiters_after_a_bump():
    cooldown = Cooldown(floor_s=0.0, cap_s=1.0, halflife_s=5.0)
    asyncio.run(cooldown.bump(0.1))
    began = time.monotonic()
    asyncio.run(cooldown.wait_if_needed())
    assert time.monotonic() - began >= 0.08
    assert cooldown.remaining_s == 0.0


# -- minima-llm's shipped example, only the import changed -----------------------------------------------


def test_minima_llm_basic_usage_example_runs_with_the_import_changed(srv, tmp_path):
    """examples/basic_usage.py from minima-llm's wheel, `minima_llm` -> `minima_nb`, on the mock."""
    source = importlib.resources.files("minima_llm").joinpath("examples/basic_usage.py").read_text()
    assert "from minima_llm import" in source
    script = tmp_path / "basic_usage.py"
    script.write_text(source.replace("from minima_llm import", "from minima_nb import"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CACHE_", "BATCH_"))}
    env.update(OPENAI_BASE_URL=srv.base_url, OPENAI_MODEL="mock-model", CACHE_DIR=str(tmp_path / "c"), RPM="0")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "MinimaLlmConfig" in done.stdout and "Completed: 100" in done.stdout and "Failed:    0" in done.stdout
    assert srv.requests_total == 100


def test_debug_trace_prints_each_exchange_of_the_calling_task_only(srv, tmp_path, capsys):
    """set_debug_trace(True) traces this task's requests to stderr, never the key; reset stops it."""
    llm = make_backend(srv, tmp_path, api_key="sk-trace-secret-77")
    token = set_debug_trace(True)
    try:
        run_sync(llm.generate(ask("traced")))
    finally:
        reset_debug_trace(token)
    run_sync(llm.generate(ask("untraced")))
    close_backend(llm)
    err = capsys.readouterr().err
    assert "TRACE traced:" in err and '"content":"traced"' in err and "chat.completion" in err
    assert "untraced" not in err and "sk-trace-secret-77" not in err


def test_last_cached_says_whether_the_last_generate_was_a_hit(srv, tmp_path):
    llm = make_backend(srv, tmp_path)

    async def twice():
        await llm.generate(ask("lc"))
        first = get_last_cached()
        await llm.generate(ask("lc"))
        return first, get_last_cached()

    try:
        assert run_sync(twice()) == (False, True)
    finally:
        close_backend(llm)


def test_the_readme_successor_section_covers_every_name_and_variable_of_minima_llm():
    """"Coming from minima-llm" has a row for each public name and environment variable it had."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Coming from minima-llm", 1)[1].split("\n## ", 1)[0]
    mentioned = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", " ".join(re.findall(r"`([^`]*)`", section))))
    names = {n for n in minima_llm.__all__ if n not in NOT_YET}
    for prefixed in ("force_refresh", "retry_seed", "last_cached", "debug_trace"):
        if any(n.endswith(prefixed) for n in names):  # written once as set_/get_/reset_<name>
            names = {n for n in names if not n.endswith(prefixed)}
            spellings = (f"set_/get_/reset_{prefixed}", f"set_/get_{prefixed}", f"set_/reset_{prefixed}")
            assert any(spelling in section for spelling in spellings), prefixed
    assert names <= mentioned, names - mentioned
    config_source = importlib.resources.files("minima_llm").joinpath("config.py").read_text()
    variables = set(re.findall(r'_env_\w+\("([A-Z_]+)"', config_source))
    variables |= set(re.findall(r'os\.environ\.get\("([A-Z_]+)"', importlib.resources.files("minima_llm")
                                .joinpath("backend.py").read_text()))
    assert len(variables) > 20 and variables <= mentioned, variables - mentioned


def test_prompt_cache_face_reads_and_writes_minima_llms_own_table(tmp_path):
    """Rows put through minima_nb.PromptCache are read by minima-llm's PromptCache, and back."""
    from minima_llm.backend import PromptCache as TheirPromptCache

    from minima_nb import PromptCache

    path = tmp_path / "minima_llm.db"
    ours = PromptCache(path)
    ours.put("k-old", "old", {"id": "a"}, created_at=1.0)
    ours.put("k-new", "new", None, model="m", canonical="{}")
    theirs = TheirPromptCache(str(path))
    assert theirs.get("k-old") == ("old", {"id": "a"}) and theirs.get("k-new") == ("new", None)
    theirs.put("k-theirs", "from minima-llm", {"x": 1})
    theirs.close()
    assert ours.get("k-theirs") == ("from minima-llm", {"x": 1}) and ours.get("absent") is None
    assert ours.get_newest(["k-old", "k-new", "absent"]).text == "new"
    assert ours.get_row("k-old").created_at == 1.0
    ours.close()
    reader = PromptCache(path, read_only=True)
    with pytest.raises(RuntimeError, match="read-only"):
        reader.put("k", "t", None)
    reader.close()
    with pytest.raises(FileNotFoundError):
        PromptCache(tmp_path / "none.db", read_only=True)


def test_batch_config_from_env_reads_the_batch_variables(monkeypatch):
    monkeypatch.setenv("BATCH_NUM_WORKERS", "3")
    monkeypatch.setenv("BATCH_MAX_FAILURES", "none")
    monkeypatch.setenv("BATCH_KEEP_FAILURE_SUMMARIES", "2")
    assert BatchConfig.from_env() == BatchConfig(num_workers=3, max_failures=None, keep_failure_summaries=2)


def test_a_missing_lookup_dir_is_the_file_not_found_error_minima_llm_raised(srv, tmp_path):
    from minima_nb import CacheError

    with pytest.raises(FileNotFoundError, match="cache_lookup_dirs") as info:
        make_backend(srv, tmp_path / "c", cache_lookup_dirs=(str(tmp_path / "nope"),))
    assert isinstance(info.value, CacheError)


def test_body_snippet_never_keeps_a_piece_of_an_echoed_key(tmp_path):
    """A server quoting the key in its error: the snippet has none of it, even where the key
    is longer than the snippet and crosses its end."""
    from minima_nb.testing import MockServer

    key = "zq" + "7" * 400  # not key-shaped: only the exact-key rule can catch it
    with MockServer(echo_credentials=True) as server:
        server.script("echo", ["400"])
        llm = make_backend(server, tmp_path, api_key=key)
        try:
            failure = run_sync(llm.generate(ask("echo")))
        finally:
            close_backend(llm)
    assert isinstance(failure, MinimaLlmFailure) and failure.status == 400
    assert "Authorization" in failure.body_snippet and "[redacted]" in failure.body_snippet
    assert key[:12] not in failure.body_snippet and len(failure.body_snippet) <= 300
