"""Settings: the frozen config dataclasses, and the only place that reads ``os.environ`` or YAML.

Precedence, lowest to highest: the defaults below, the environment, explicit values (keyword
arguments, a dict, a YAML file). The constructor itself never looks at the environment, so
``MinimaLlmConfig(base_url=..., model=...)`` means exactly what it says.

The API key is a secret: it is left out of ``repr``, ``describe()`` and pickles (a pickled
config picks the key up again from ``OPENAI_API_KEY`` where it is unpickled, which is what a
Dask worker on another machine needs).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

TRANSPORTS = ("aiohttp", "httpx")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(text: str, setting: str) -> bool:
    """Read 1/0, true/false, yes/no, on/off in any case; anything else names ``setting``."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigError(f"{setting}={text!r} is not a boolean; use one of 1/0, true/false, yes/no, on/off.")


def _parse_number(kind: Callable[[str], Any], text: str, setting: str) -> Any:
    try:
        return kind(text.strip())
    except ValueError:
        raise ConfigError(f"{setting}={text!r} is not a valid {kind.__name__}; set it to a number.") from None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class BatchConfig:
    """Settings of the batch worker pool.

    ``max_failures`` failures stop the batch with ``BatchAborted`` (0 = never stop);
    ``heartbeat_s`` spaces the terminal progress lines; ``stall_s`` without a completion
    prints a stall warning.
    """

    num_workers: int = 64
    max_failures: int = 25
    heartbeat_s: float = 10.0
    stall_s: float = 300.0

    def __post_init__(self) -> None:
        _check(self.num_workers >= 1, f"num_workers={self.num_workers} must be at least 1 (BATCH_NUM_WORKERS).")
        _check(self.max_failures >= 0, f"max_failures={self.max_failures} must be >= 0; 0 means never abort (BATCH_MAX_FAILURES).")
        _check(self.heartbeat_s > 0, f"heartbeat_s={self.heartbeat_s} must be > 0 (BATCH_HEARTBEAT_S).")
        _check(self.stall_s > 0, f"stall_s={self.stall_s} must be > 0 (BATCH_STALL_S).")


@dataclass(frozen=True)
class ParasailBatchConfig:
    """Settings of the providers' batch APIs (upload JSONL, poll, download into the cache).

    ``state_dir`` keeps the submitted batches' state files so a run can be resumed;
    ``prefix`` names the batches so that several runs can share one account.
    """

    prefix: str | None = None
    state_dir: str | None = None
    poll_interval_s: float = 30.0
    max_poll_hours: float = 24.0
    completion_window: str = "24h"

    def __post_init__(self) -> None:
        _check(self.poll_interval_s > 0, f"poll_interval_s={self.poll_interval_s} must be > 0 (PARASAIL_POLL_INTERVAL_S).")
        _check(self.max_poll_hours > 0, f"max_poll_hours={self.max_poll_hours} must be > 0 (PARASAIL_MAX_POLL_HOURS).")


@dataclass(frozen=True)
class MinimaLlmConfig:
    """Everything a backend needs: endpoint, model, key, cache, concurrency, pacing, retries.

    ``rpm=0`` and ``max_attempts=0`` mean unlimited. ``cache_dir=None`` disables the cache.
    Build one with the constructor, :meth:`from_env`, :meth:`from_dict` or :meth:`from_yaml`.
    """

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False, compare=False)
    cache_dir: str | None = None
    cache_namespace: str | None = None
    force_refresh: bool = False
    trace_file: str | None = None
    transport: str = "aiohttp"
    compress_gzip: bool = False
    max_outstanding: int = 32
    rpm: int = 600
    timeout_s: float = 60.0
    max_attempts: int = 6
    base_backoff_s: float = 0.5
    max_backoff_s: float = 20.0
    jitter: float = 0.2
    max_retry_after_s: float = 60.0
    cooldown_floor_s: float = 0.0
    cooldown_cap_s: float = 30.0
    cooldown_halflife_s: float = 20.0
    batch: BatchConfig = field(default_factory=BatchConfig)
    parasail: ParasailBatchConfig = field(default_factory=ParasailBatchConfig)

    def __post_init__(self) -> None:
        for name, nested in (("batch", BatchConfig), ("parasail", ParasailBatchConfig)):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, _build(nested, value, f"{name}."))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", os.fspath(self.cache_dir))
        self._validate()

    def _validate(self) -> None:
        url = urlsplit(self.base_url or "")
        _check(
            url.scheme in ("http", "https") and bool(url.netloc),
            f"base_url={self.base_url!r} needs a scheme and a host, e.g. "
            "'https://api.openai.com/v1' or 'http://127.0.0.1:8000/v1' (OPENAI_BASE_URL).",
        )
        _check(bool(self.model), "model is empty; set it to the model name the server expects (OPENAI_MODEL).")
        _check(
            self.transport in TRANSPORTS,
            f"transport={self.transport!r} is unknown; use one of {', '.join(TRANSPORTS)} (MINIMA_TRANSPORT).",
        )
        _check(self.rpm >= 0, f"rpm={self.rpm} must be >= 0; 0 turns pacing off (RPM).")
        _check(self.max_outstanding >= 1, f"max_outstanding={self.max_outstanding} must be at least 1 (MAX_OUTSTANDING).")
        _check(self.timeout_s > 0, f"timeout_s={self.timeout_s} must be > 0 seconds (TIMEOUT_S).")
        _check(self.max_attempts >= 0, f"max_attempts={self.max_attempts} must be >= 0; 0 retries forever (MAX_ATTEMPTS).")
        _check(self.base_backoff_s >= 0, f"base_backoff_s={self.base_backoff_s} must be >= 0 (BASE_BACKOFF_S).")
        _check(
            self.max_backoff_s >= self.base_backoff_s,
            f"max_backoff_s={self.max_backoff_s} must be >= base_backoff_s={self.base_backoff_s} (MAX_BACKOFF_S).",
        )
        _check(0 <= self.jitter <= 1, f"jitter={self.jitter} must be between 0 and 1, a fraction of the delay (JITTER).")
        _check(self.max_retry_after_s >= 0, f"max_retry_after_s={self.max_retry_after_s} must be >= 0 (MINIMA_MAX_RETRY_AFTER_S).")
        _check(
            0 <= self.cooldown_floor_s <= self.cooldown_cap_s,
            f"cooldown_floor_s={self.cooldown_floor_s} must be between 0 and cooldown_cap_s={self.cooldown_cap_s} (COOLDOWN_FLOOR_S).",
        )
        _check(self.cooldown_halflife_s > 0, f"cooldown_halflife_s={self.cooldown_halflife_s} must be > 0 (COOLDOWN_HALFLIFE_S).")

    # -- derived values ---------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        """The chat-completions URL: ``.../v1`` gets ``/chat/completions``, any other base ``/v1/chat/completions``."""
        base = self.base_url.rstrip("/")
        if base.endswith("/chat/completions"):
            return base
        if base.endswith("/v1"):
            return base + "/chat/completions"
        return base + "/v1/chat/completions"

    @property
    def api_root(self) -> str:
        """The ``.../v1`` root that ``/models``, ``/files`` and ``/batches`` hang off."""
        return self.endpoint_url[: -len("/chat/completions")]

    # -- builders -----------------------------------------------------------------------------

    @classmethod
    def from_env(cls, **overrides: Any) -> MinimaLlmConfig:
        """Build from environment variables; keyword arguments win over them."""
        return cls.from_dict(overrides)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MinimaLlmConfig:
        """Build from a mapping (nested ``batch:``/``parasail:`` allowed); missing keys come from the environment."""
        merged = _read_env(os.environ)
        for key, value in dict(values).items():
            if key in ("batch", "parasail") and isinstance(value, Mapping):
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
        if not merged.get("base_url") or not merged.get("model"):
            missing = [k for k in ("base_url", "model") if not merged.get(k)]
            env = {"base_url": "OPENAI_BASE_URL", "model": "OPENAI_MODEL"}
            raise ConfigError(
                f"{' and '.join(missing)} not set: set {' and '.join(env[k] for k in missing)} in the environment "
                f"or pass {', '.join(f'{k}=...' for k in missing)}."
            )
        return _build(cls, merged, "")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> MinimaLlmConfig:
        """Build from a YAML file of the same keys (needs the ``yaml`` extra); no environment variable is required."""
        try:
            import yaml
        except ImportError:
            raise ConfigError("from_yaml needs PyYAML: pip install 'minima-nb[yaml]'.") from None
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {os.fspath(path)!r}: {exc.strerror}.") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{os.fspath(path)!r} is not valid YAML: {exc}") from None
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{os.fspath(path)!r} must hold a mapping of settings, not {type(loaded).__name__}.")
        return cls.from_dict(loaded)

    # -- views --------------------------------------------------------------------------------

    def with_model(self, model: str) -> MinimaLlmConfig:
        """A copy that talks to another model, every other setting kept."""
        return dataclasses.replace(self, model=model)

    def replace(self, **changes: Any) -> MinimaLlmConfig:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """A readable multi-line summary of every setting; the API key shows only as set or not."""
        lines = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "api_key":
                value = "(set, hidden)" if value else "(not set)"
            elif dataclasses.is_dataclass(value):
                value = ", ".join(f"{n.name}={getattr(value, n.name)!r}" for n in fields(value))
            lines.append(f"  {f.name:<20} {value}")
        return "MinimaLlmConfig\n" + "\n".join(lines)

    def __reduce__(self) -> tuple[Any, ...]:
        # The key stays behind; the receiving process reads its own OPENAI_API_KEY.
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "api_key"}
        return (_unpickle_config, (state,))


def _unpickle_config(state: dict[str, Any]) -> MinimaLlmConfig:
    return MinimaLlmConfig(api_key=os.environ.get("OPENAI_API_KEY") or None, **state)


# -- environment -----------------------------------------------------------------------------

# (environment variable, setting, type); nested settings are written "batch.num_workers".
ENV_VARS: tuple[tuple[str, str, Any], ...] = (
    ("OPENAI_BASE_URL", "base_url", str),
    ("OPENAI_MODEL", "model", str),
    ("OPENAI_API_KEY", "api_key", str),
    ("CACHE_DIR", "cache_dir", str),
    ("MINIMA_CACHE_NAMESPACE", "cache_namespace", str),
    ("CACHE_FORCE_REFRESH", "force_refresh", bool),
    ("MINIMA_TRACE_FILE", "trace_file", str),
    ("MINIMA_TRANSPORT", "transport", str),
    ("MINIMA_COMPRESS_GZIP", "compress_gzip", bool),
    ("MAX_OUTSTANDING", "max_outstanding", int),
    ("RPM", "rpm", int),
    ("TIMEOUT_S", "timeout_s", float),
    ("MAX_ATTEMPTS", "max_attempts", int),
    ("BASE_BACKOFF_S", "base_backoff_s", float),
    ("MAX_BACKOFF_S", "max_backoff_s", float),
    ("JITTER", "jitter", float),
    ("MINIMA_MAX_RETRY_AFTER_S", "max_retry_after_s", float),
    ("COOLDOWN_FLOOR_S", "cooldown_floor_s", float),
    ("COOLDOWN_CAP_S", "cooldown_cap_s", float),
    ("COOLDOWN_HALFLIFE_S", "cooldown_halflife_s", float),
    ("BATCH_NUM_WORKERS", "batch.num_workers", int),
    ("BATCH_MAX_FAILURES", "batch.max_failures", int),
    ("BATCH_HEARTBEAT_S", "batch.heartbeat_s", float),
    ("BATCH_STALL_S", "batch.stall_s", float),
    ("PARASAIL_BATCH_PREFIX", "parasail.prefix", str),
    ("PARASAIL_STATE_DIR", "parasail.state_dir", str),
    ("PARASAIL_POLL_INTERVAL_S", "parasail.poll_interval_s", float),
    ("PARASAIL_MAX_POLL_HOURS", "parasail.max_poll_hours", float),
)


def setting_from_env(setting: str) -> Any:
    """One top-level setting as the environment gives it (parsed), or None when it is not set.

    For callers that need a single value without a whole config (``minima-nb cache stats``
    defaults to ``CACHE_DIR``), so that this module stays the only reader of the environment.
    """
    for var, name, _ in ENV_VARS:
        if name == setting:
            return _read_env({var: os.environ[var]}).get(setting) if var in os.environ else None
    raise KeyError(f"{setting!r} is not a setting read from the environment")


def proxy_token_from_env() -> str | None:
    """``MINIMA_PROXY_TOKEN``, the token clients of the caching proxy must send; None when unset."""
    return os.environ.get("MINIMA_PROXY_TOKEN", "").strip() or None


def _read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for var, setting, kind in ENV_VARS:
        text = environ.get(var)
        if text is None or text.strip() == "":
            continue
        if kind is bool:
            value: Any = parse_bool(text, var)
        elif kind is str:
            value = text.strip()
        else:
            value = _parse_number(kind, text, var)
        if "." in setting:
            group, name = setting.split(".", 1)
            out.setdefault(group, {})[name] = value
        else:
            out[setting] = value
    return out


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    """Construct ``cls`` from ``values``, turning unknown keys and wrong types into ConfigError."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(prefix + u for u in unknown)}; "
            f"known settings are: {', '.join(prefix + k for k in known)}."
        )
    coerced = {}
    for name, value in values.items():
        coerced[name] = _coerce(known[name], value, prefix + name)
    try:
        return cls(**coerced)
    except TypeError as exc:  # a required field missing
        raise ConfigError(f"incomplete settings for {cls.__name__}: {exc}") from None


def _coerce(f: dataclasses.Field, value: Any, setting: str) -> Any:
    """Accept strings for numbers and booleans (YAML and dicts from CLIs carry them), reject the rest clearly."""
    hint = str(f.type)
    if value is None or f.name in ("batch", "parasail"):
        return value
    if hint == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)):
            return parse_bool(str(value), setting)
    elif hint in ("int", "float"):
        kind = int if hint == "int" else float
        if isinstance(value, bool):
            raise ConfigError(f"{setting}={value!r} must be a number, not a boolean.")
        if isinstance(value, (int, float)):
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ConfigError(f"{setting}={value!r} must be a whole number.")
            return kind(value)
        if isinstance(value, str):
            return _parse_number(kind, value, setting)
    elif "str" in hint:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
    else:
        return value
    raise ConfigError(f"{setting}={value!r} has the wrong type; expected {hint}.")
