"""The environment variables minima_nb reads, and how their text becomes a setting's value.

This is the only module that reads ``os.environ`` for settings. :data:`ENV_VARS` is the whole
table (the README's configuration table is checked against it). Where minima-llm spelled a
variable differently (``OPENAI_TOKEN``, ``COMPRESS_GZIP``), both names are read and the
minima_nb name wins when both are set: a variable that appears twice for one setting in the
table is an alias, and the first one set wins.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# minima-llm's spelling of "never abort" for BATCH_MAX_FAILURES.
_NONE_WORDS = {"none", "null", "never", "off"}


class OptionalInt:
    """Marker kind: a whole number, or ``none`` for ``None`` (BATCH_MAX_FAILURES=none)."""


class NameList:
    """Marker kind: a comma-separated list of names, read as a tuple (MODEL_SYNONYMS=a,b)."""


# (environment variable, setting, kind); nested settings are written "batch.num_workers".
ENV_VARS: tuple[tuple[str, str, Any], ...] = (
    ("OPENAI_BASE_URL", "base_url", str),
    ("OPENAI_MODEL", "model", str),
    ("OPENAI_API_KEY", "api_key", str),
    ("OPENAI_TOKEN", "api_key", str),  # minima-llm's fallback name
    ("CACHE_DIR", "cache_dir", str),
    ("MINIMA_CACHE_NAMESPACE", "cache_namespace", str),
    ("CACHE_FORCE_REFRESH", "force_refresh", bool),
    ("CACHE_LOOKUP_DIRS", "cache_lookup_dirs", NameList),
    ("MODEL_SYNONYMS", "model_synonyms", NameList),
    ("MINIMA_TRACE_FILE", "trace_file", str),
    ("MINIMA_TRANSPORT", "transport", str),
    ("MINIMA_COMPRESS_GZIP", "compress_gzip", bool),
    ("COMPRESS_GZIP", "compress_gzip", bool),  # minima-llm's name
    ("MAX_OUTSTANDING", "max_outstanding", int),
    ("RPM", "rpm", int),
    ("ADAPTIVE_RPM", "adaptive_rpm", bool),
    ("TIMEOUT_S", "timeout_s", float),
    ("MAX_ATTEMPTS", "max_attempts", int),
    ("BASE_BACKOFF_S", "base_backoff_s", float),
    ("MAX_BACKOFF_S", "max_backoff_s", float),
    ("JITTER", "jitter", float),
    ("MINIMA_MAX_RETRY_AFTER_S", "max_retry_after_s", float),
    ("COOLDOWN_FLOOR_S", "cooldown_floor_s", float),
    ("COOLDOWN_CAP_S", "cooldown_cap_s", float),
    ("COOLDOWN_HALFLIFE_S", "cooldown_halflife_s", float),
    ("RETRY_TEMPERATURE_MAX", "retry_temperature_max", float),
    ("RETRY_TEMPERATURE_HALFLIFE", "retry_temperature_halflife", float),
    ("BATCH_NUM_WORKERS", "batch.num_workers", int),
    ("BATCH_MAX_FAILURES", "batch.max_failures", OptionalInt),
    ("BATCH_HEARTBEAT_S", "batch.heartbeat_s", float),
    ("BATCH_STALL_S", "batch.stall_s", float),
    ("BATCH_PRINT_FIRST_FAILURES", "batch.print_first_failures", int),
    ("BATCH_KEEP_FAILURE_SUMMARIES", "batch.keep_failure_summaries", int),
    ("PARASAIL_BATCH_PREFIX", "parasail.prefix", str),
    ("PARASAIL_STATE_DIR", "parasail.state_dir", str),
    ("PARASAIL_POLL_INTERVAL_S", "parasail.poll_interval_s", float),
    ("PARASAIL_MAX_POLL_HOURS", "parasail.max_poll_hours", float),
)


def parse_bool(text: str, setting: str) -> bool:
    """Read 1/0, true/false, yes/no, on/off in any case; anything else names ``setting``."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigError(f"{setting}={text!r} is not a boolean; use one of 1/0, true/false, yes/no, on/off.")


def parse_number(kind: Callable[[str], Any], text: str, setting: str) -> Any:
    """``kind(text)``, or a ConfigError naming ``setting`` when the text is not such a number."""
    try:
        return kind(text.strip())
    except ValueError:
        raise ConfigError(f"{setting}={text!r} is not a valid {kind.__name__}; set it to a number.") from None


def parse_optional_int(text: str, setting: str) -> int | None:
    """A whole number, or ``None`` for ``none``/``never`` (minima-llm's "never abort")."""
    if text.strip().lower() in _NONE_WORDS:
        return None
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(
            f"{setting}={text!r} is not a whole number; set a number, or 'none' for no limit."
        ) from None


def parse_name_list(value: Any, setting: str) -> tuple[str, ...]:
    """A comma-separated string or a list (YAML) as a tuple of non-empty names."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple)):
        return tuple(os.fspath(item) if isinstance(item, os.PathLike) else str(item) for item in value)
    raise ConfigError(f"{setting}={value!r} must be a list or a comma-separated string of names.")


def api_key_from_env() -> str | None:
    """``OPENAI_API_KEY``, else minima-llm's ``OPENAI_TOKEN``, else None."""
    return read_env(os.environ, only="api_key").get("api_key")


def proxy_token_from_env() -> str | None:
    """``MINIMA_PROXY_TOKEN``, the token clients of the caching proxy must send; None when unset."""
    return os.environ.get("MINIMA_PROXY_TOKEN", "").strip() or None


def debug_trace_from_env() -> bool:
    """Whether ``MINIMA_DEBUG`` (minima-llm's switch) asks for the request/response trace."""
    text = os.environ.get("MINIMA_DEBUG", "").strip()
    return bool(text) and text.lower() not in _FALSE


def setting_from_env(setting: str) -> Any:
    """One top-level setting as the environment gives it (parsed), or None when it is not set.

    For callers that need a single value without a whole config (``minima-nb cache stats``
    defaults to ``CACHE_DIR``), so that this module stays the only reader of the environment.
    """
    if not any(name == setting for _, name, _ in ENV_VARS):
        raise KeyError(f"{setting!r} is not a setting read from the environment")
    return read_env(os.environ, only=setting).get(setting)


def read_env(environ: Mapping[str, str], only: str | None = None) -> dict[str, Any]:
    """Every setting ``environ`` sets (nested ones as ``{"batch": {...}}``); ``only`` reads one."""
    out: dict[str, Any] = {}
    seen: set[str] = set()
    for var, setting, kind in ENV_VARS:
        if (only is not None and setting != only) or setting in seen:
            continue
        text = environ.get(var)
        if text is None or text.strip() == "":
            continue
        seen.add(setting)  # an alias later in the table does not override this one
        value = _parse(kind, text, var)
        if "." in setting:
            group, name = setting.split(".", 1)
            out.setdefault(group, {})[name] = value
        else:
            out[setting] = value
    return out


def _parse(kind: Any, text: str, var: str) -> Any:
    if kind is bool:
        return parse_bool(text, var)
    if kind is str:
        return text.strip()
    if kind is OptionalInt:
        return parse_optional_int(text, var)
    if kind is NameList:
        return parse_name_list(text, var)
    return parse_number(kind, text, var)
