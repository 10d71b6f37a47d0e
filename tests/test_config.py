"""Config: precedence, validation messages, and the API key staying secret."""

from __future__ import annotations

import pickle

import pytest

from minima_nb import BatchConfig, ConfigError, MinimaLlmConfig

KEY = "sk-test-SECRET-0123456789"
BASE = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Each test starts with none of the settings' environment variables set."""
    from minima_nb.config import ENV_VARS

    for var, _, _ in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def test_defaults_match_the_documented_ones():
    """The defaults are the predecessor's documented defaults."""
    c = MinimaLlmConfig(**BASE)
    assert (c.max_outstanding, c.rpm, c.timeout_s, c.max_attempts) == (32, 600, 60.0, 6)
    assert (c.batch.num_workers, c.batch.max_failures, c.batch.heartbeat_s) == (64, 25, 10.0)
    assert c.cache_dir is None and c.transport == "auto"


def test_from_env_reads_every_variable(monkeypatch):
    """from_env reads the predecessor's variables, nested batch ones included."""
    monkeypatch.setenv("OPENAI_BASE_URL", "https://example.test/v1")
    monkeypatch.setenv("OPENAI_MODEL", "gpt-x")
    monkeypatch.setenv("RPM", "120")
    monkeypatch.setenv("BATCH_NUM_WORKERS", "8")
    monkeypatch.setenv("CACHE_FORCE_REFRESH", "true")
    monkeypatch.setenv("TIMEOUT_S", "2.5")
    c = MinimaLlmConfig.from_env()
    assert (c.base_url, c.model, c.rpm, c.batch.num_workers) == ("https://example.test/v1", "gpt-x", 120, 8)
    assert c.force_refresh is True and c.timeout_s == 2.5


@pytest.mark.parametrize("word,value", [("1", True), ("TRUE", True), ("yes", True), ("On", True),
                                        ("0", False), ("false", False), ("No", False), ("off", False)])
def test_boolean_env_words(monkeypatch, word, value):
    """Boolean variables accept 1/0, true/false, yes/no, on/off in any case."""
    monkeypatch.setenv("CACHE_FORCE_REFRESH", word)
    assert MinimaLlmConfig.from_env(**BASE).force_refresh is value


def test_bad_boolean_names_the_variable(monkeypatch):
    """A non-boolean word is a ConfigError naming the variable."""
    monkeypatch.setenv("CACHE_FORCE_REFRESH", "maybe")
    with pytest.raises(ConfigError, match="CACHE_FORCE_REFRESH"):
        MinimaLlmConfig.from_env(**BASE)


def test_explicit_values_beat_environment(monkeypatch):
    """Keyword arguments and dict values win over the environment."""
    monkeypatch.setenv("OPENAI_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    assert MinimaLlmConfig.from_env(model="explicit").model == "explicit"
    assert MinimaLlmConfig.from_dict({"model": "dict"}).model == "dict"


def test_missing_required_settings_say_how_to_fix():
    """Without base_url/model the error names the variables and the keyword arguments."""
    with pytest.raises(ConfigError) as info:
        MinimaLlmConfig.from_env()
    assert "OPENAI_BASE_URL" in str(info.value) and "OPENAI_MODEL" in str(info.value)


def test_from_yaml_needs_no_environment(tmp_path):
    """from_yaml builds a full config with no environment variable set (predecessor defect 9)."""
    path = tmp_path / "c.yml"
    path.write_text(
        "base_url: https://api.example.test/v1\nmodel: gpt-4\napi_key: sk-y\ncache_dir: ./cache\n"
        "batch:\n  num_workers: 4\n  max_failures: 3\n  heartbeat_s: 2.0\n"
    )
    c = MinimaLlmConfig.from_yaml(path)
    assert c.model == "gpt-4" and c.batch == BatchConfig(num_workers=4, max_failures=3, heartbeat_s=2.0)
    assert c == MinimaLlmConfig.from_dict({"base_url": "https://api.example.test/v1", "model": "gpt-4",
                                           "cache_dir": "./cache",
                                           "batch": {"num_workers": 4, "max_failures": 3, "heartbeat_s": 2.0}})


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"rpm": -1}, "rpm"),
        ({"base_url": "api.openai.com/v1"}, "scheme"),
        ({"transport": "requests"}, "transport"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"max_attempts": -2}, "max_attempts"),
        ({"jitter": 3}, "jitter"),
        ({"batch": {"num_workers": 0}}, "num_workers"),
    ],
)
def test_bad_values_name_the_setting(change, needle):
    """Each invalid value is a ConfigError (also a ValueError) naming the setting."""
    with pytest.raises(ConfigError, match=needle) as info:
        MinimaLlmConfig.from_dict({**BASE, **change})
    assert isinstance(info.value, ValueError)


def test_unknown_setting_lists_known_ones():
    """A typo in a setting name is refused with the list of valid names."""
    with pytest.raises(ConfigError, match="unknown setting.*rpmm.*known settings"):
        MinimaLlmConfig.from_dict({**BASE, "rpmm": 5})


def test_number_strings_are_accepted_and_garbage_refused():
    """Numbers given as strings (YAML, CLIs) are coerced; garbage names the setting."""
    assert MinimaLlmConfig.from_dict({**BASE, "rpm": "90"}).rpm == 90
    with pytest.raises(ConfigError, match="rpm"):
        MinimaLlmConfig.from_dict({**BASE, "rpm": "ninety"})


def test_api_key_hidden_from_repr_describe_and_pickle(monkeypatch):
    """The key appears in no repr, no describe() and no pickle."""
    c = MinimaLlmConfig(**BASE, api_key=KEY)
    assert KEY not in repr(c) and KEY not in str(c)
    assert KEY not in c.describe() and "(set, hidden)" in c.describe()
    blob = pickle.dumps(c)
    assert KEY.encode() not in blob
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other-process")
    assert pickle.loads(blob).api_key == "sk-other-process"


def test_with_model_keeps_everything_else():
    """with_model changes only the model."""
    c = MinimaLlmConfig(**BASE, api_key=KEY, rpm=7)
    d = c.with_model("other")
    assert d.model == "other" and d.rpm == 7 and d.api_key == KEY


@pytest.mark.parametrize(
    "base,endpoint",
    [
        ("https://api.openai.com/v1", "https://api.openai.com/v1/chat/completions"),
        ("https://api.openai.com/v1/", "https://api.openai.com/v1/chat/completions"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/chat/completions"),
    ],
)
def test_endpoint_url_with_or_without_v1(base, endpoint):
    """A base ending in /v1 gets /chat/completions; any other gets /v1/chat/completions."""
    assert MinimaLlmConfig(base_url=base, model="m").endpoint_url == endpoint


def test_setting_from_env_reads_one_variable_only(monkeypatch):
    """setting_from_env parses just the asked variable; others, even invalid, are not read."""
    from minima_nb.config import setting_from_env

    monkeypatch.setenv("CACHE_DIR", " /tmp/c ")
    monkeypatch.setenv("RPM", "fast")
    assert setting_from_env("cache_dir") == "/tmp/c"
    assert setting_from_env("api_key") is None
    with pytest.raises(ConfigError, match="RPM"):
        setting_from_env("rpm")
