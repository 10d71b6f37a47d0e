"""Settings: the frozen config dataclasses, and the only place that reads ``os.environ`` or YAML.

Precedence, lowest to highest: the defaults below, the environment, explicit values (keyword
arguments, a dict, a YAML file). The constructor itself never looks at the environment, so
``MinimaLlmConfig(base_url=..., model=...)`` means exactly what it says.

The API key is a secret: it is left out of ``repr``, ``describe()`` and pickles (a pickled
config picks the key up again from ``OPENAI_API_KEY`` (or ``OPENAI_TOKEN``) where it is unpickled, which is what a
Dask worker on another machine needs).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .environment import (
    ENV_VARS,
    api_key_from_env,
    parse_bool,
    parse_name_list,
    parse_number,
    parse_optional_int,
    read_env,
    setting_from_env,
)
from .errors import ConfigError

__all__ = ["ENV_VARS", "BatchConfig", "MinimaLlmConfig", "ParasailBatchConfig", "setting_from_env"]

TRANSPORTS = ("auto", "http1", "aiohttp", "httpx")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class BatchConfig:
    """Settings of the batch worker pool, with minima-llm's names and meanings.

    The batch stops with ``BatchAborted`` when its failed rows exceed ``max_failures``
    (``None`` = never stop, ``0`` = stop at the first failure). The first
    ``print_first_failures`` failures are printed as they happen; the abort message lists the
    last ``keep_failure_summaries``. ``heartbeat_s`` spaces the terminal progress lines;
    ``stall_s`` without a completion prints a stall warning.
    """

    num_workers: int = 64
    max_failures: int | None = 25
    heartbeat_s: float = 10.0
    stall_s: float = 300.0
    print_first_failures: int = 5
    keep_failure_summaries: int = 20

    @classmethod
    def from_env(cls) -> BatchConfig:
        """The batch settings the ``BATCH_*`` environment variables give (defaults for the rest)."""
        return _build(cls, read_env(os.environ).get("batch", {}), "batch.")

    def __post_init__(self) -> None:
        # Types first: a string or a float from hand-written code gets a ConfigError naming the
        # setting, never a bare TypeError from a comparison below.
        for name, env, optional in (
            ("num_workers", "BATCH_NUM_WORKERS", False),
            ("max_failures", "BATCH_MAX_FAILURES", True),
            ("print_first_failures", "BATCH_PRINT_FIRST_FAILURES", False),
            ("keep_failure_summaries", "BATCH_KEEP_FAILURE_SUMMARIES", False),
        ):
            value = getattr(self, name)
            if optional and value is None:
                continue
            _check(
                isinstance(value, int) and not isinstance(value, bool),
                f"batch.{name}={value!r} must be a whole number{' or None (never abort)' if optional else ''} ({env}).",
            )
        for name, env in (("heartbeat_s", "BATCH_HEARTBEAT_S"), ("stall_s", "BATCH_STALL_S")):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and not isinstance(value, bool),
                   f"batch.{name}={value!r} must be a number of seconds ({env}).")
        _check(self.num_workers >= 1, f"num_workers={self.num_workers} must be at least 1 (BATCH_NUM_WORKERS).")
        _check(
            self.max_failures is None or self.max_failures >= 0,
            f"max_failures={self.max_failures} must be >= 0 (0 stops at the first failure) or None to never "
            "stop (BATCH_MAX_FAILURES=none).",
        )
        _check(self.heartbeat_s > 0, f"heartbeat_s={self.heartbeat_s} must be > 0 (BATCH_HEARTBEAT_S).")
        _check(self.stall_s > 0, f"stall_s={self.stall_s} must be > 0 (BATCH_STALL_S).")
        _check(self.print_first_failures >= 0,
               f"print_first_failures={self.print_first_failures} must be >= 0 (BATCH_PRINT_FIRST_FAILURES).")
        _check(self.keep_failure_summaries >= 0,
               f"keep_failure_summaries={self.keep_failure_summaries} must be >= 0 (BATCH_KEEP_FAILURE_SUMMARIES).")


@dataclass(frozen=True)
class ParasailBatchConfig:
    """Settings of the providers' batch APIs (upload JSONL, poll, download into the cache).

    ``state_dir`` keeps the submitted batches' state (one SQLite file, default: the cache
    directory) so a run can be resumed;
    ``prefix`` names the batches so that several runs can share one account
    (``llm_batch_prefix`` is minima-llm's user-facing name for it, used when ``prefix`` is not
    set); ``max_batch_size`` and ``max_batch_bytes`` cap the lines and encoded bytes of one
    uploaded batch; ``max_rounds`` bounds how often a row is sent again after its batch expired,
    was lost or failed it with a retryable error.
    """

    llm_batch_prefix: str | None = None
    prefix: str | None = None
    state_dir: str | None = None
    poll_interval_s: float = 30.0
    max_poll_hours: float = 24.0
    max_batch_size: int = 50_000
    completion_window: str = "24h"
    max_batch_bytes: int = 190_000_000  # OpenAI's 200 MB, less a margin; Parasail takes 500 MB
    upload_purpose: str = "batch"  # Together wants "batch-api"
    max_rounds: int = 3  # batches per row: expired, lost and retryable failed rows go again

    def __post_init__(self) -> None:
        _check(self.poll_interval_s > 0, f"poll_interval_s={self.poll_interval_s} must be > 0 (PARASAIL_POLL_INTERVAL_S).")
        _check(self.max_poll_hours > 0, f"max_poll_hours={self.max_poll_hours} must be > 0 (PARASAIL_MAX_POLL_HOURS).")
        _check(self.max_batch_size >= 1, f"parasail.max_batch_size={self.max_batch_size} must be at least 1.")
        _check(self.max_batch_bytes >= 1024, f"parasail.max_batch_bytes={self.max_batch_bytes} must be at least 1024.")
        _check(self.max_rounds >= 1, f"parasail.max_rounds={self.max_rounds} must be at least 1.")
        _check(bool(self.completion_window), "parasail.completion_window is empty; OpenAI accepts only '24h'.")

    @property
    def effective_prefix(self) -> str | None:
        """The batch-name prefix in use: ``prefix``, else ``llm_batch_prefix``."""
        return self.prefix or self.llm_batch_prefix

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ParasailBatchConfig:
        """Build from a mapping of these settings (minima-llm's spelling); ``None`` or ``{}`` gives the defaults."""
        return cls() if not data else _build(cls, data, "parasail.")


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
    transport: str = "auto"
    compress_gzip: bool = False
    max_outstanding: int = 32
    rpm: int = 600
    adaptive_rpm: bool = True
    timeout_s: float = 60.0
    max_attempts: int = 6
    base_backoff_s: float = 0.5
    max_backoff_s: float = 20.0
    jitter: float = 0.2
    max_retry_after_s: float = 60.0
    cooldown_floor_s: float = 0.0
    cooldown_cap_s: float = 30.0
    cooldown_halflife_s: float = 20.0
    retry_temperature_max: float = 0.5
    retry_temperature_halflife: float = 5.0
    cache_lookup_dirs: tuple[str, ...] = ()
    model_synonyms: tuple[str, ...] = ()
    batch: BatchConfig = field(default_factory=BatchConfig)
    parasail: ParasailBatchConfig = field(default_factory=ParasailBatchConfig)

    def __post_init__(self) -> None:
        for name, nested in (("batch", BatchConfig), ("parasail", ParasailBatchConfig)):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, _build(nested, value, f"{name}."))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", os.fspath(self.cache_dir))
        for name in ("cache_lookup_dirs", "model_synonyms"):  # a list or "a,b" from hand-written code
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                object.__setattr__(self, name, parse_name_list(value, name))
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
        _check(self.retry_temperature_max >= 0,
               f"retry_temperature_max={self.retry_temperature_max} must be >= 0; 0 turns the ramp off (RETRY_TEMPERATURE_MAX).")
        _check(self.retry_temperature_halflife > 0,
               f"retry_temperature_halflife={self.retry_temperature_halflife} must be > 0 (RETRY_TEMPERATURE_HALFLIFE).")

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

    # minima-llm's flat names for the batch settings (read-only views of ``batch``).

    @property
    def num_workers(self) -> int:
        """``batch.num_workers``."""
        return self.batch.num_workers

    @property
    def max_failures(self) -> int | None:
        """``batch.max_failures``."""
        return self.batch.max_failures

    @property
    def heartbeat_s(self) -> float:
        """``batch.heartbeat_s``."""
        return self.batch.heartbeat_s

    @property
    def stall_s(self) -> float:
        """``batch.stall_s``."""
        return self.batch.stall_s

    @property
    def print_first_failures(self) -> int:
        """``batch.print_first_failures``."""
        return self.batch.print_first_failures

    @property
    def keep_failure_summaries(self) -> int:
        """``batch.keep_failure_summaries``."""
        return self.batch.keep_failure_summaries

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
        merged = read_env(os.environ)
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
        # The key stays behind; the receiving process reads its own OPENAI_API_KEY / OPENAI_TOKEN.
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "api_key"}
        return (_unpickle_config, (state,))


def _unpickle_config(state: dict[str, Any]) -> MinimaLlmConfig:
    return MinimaLlmConfig(api_key=api_key_from_env(), **state)


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
    elif hint.startswith("tuple"):
        return parse_name_list(value, setting)
    elif hint in ("int", "float", "int | None"):
        kind = int if hint.startswith("int") else float
        if isinstance(value, bool):
            raise ConfigError(f"{setting}={value!r} must be a number, not a boolean.")
        if isinstance(value, (int, float)):
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ConfigError(f"{setting}={value!r} must be a whole number.")
            return kind(value)
        if isinstance(value, str):
            if hint == "int | None":  # the environment's rule: a number, or "none" for no limit
                return parse_optional_int(value, setting)
            return parse_number(kind, value, setting)
    elif "str" in hint:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
    else:
        return value
    raise ConfigError(f"{setting}={value!r} has the wrong type; expected {hint}.")
