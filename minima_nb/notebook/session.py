"""The process-wide default backend that the pandas accessor uses when none is passed.

Set it with :func:`configure`; otherwise it is built on first use from the environment
(``OPENAI_BASE_URL``, ``OPENAI_MODEL``, ``OPENAI_API_KEY``...). When neither is there, the error
says exactly what to set or call.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..config import MinimaLlmConfig
from ..errors import ConfigError

if TYPE_CHECKING:  # the engine loads on first use: `import minima_nb` stays cheap
    from ..engine.backend import OpenAIMinimaLlm

_lock = threading.Lock()
_default: OpenAIMinimaLlm | None = None

NOT_CONFIGURED = (
    "no LLM backend is configured. Either set the environment variables OPENAI_BASE_URL and "
    "OPENAI_MODEL (and OPENAI_API_KEY, CACHE_DIR as needed), or call "
    "minima_nb.configure(base_url=..., model=..., cache_dir=...), or pass backend=... to this call. "
    "({detail})"
)


def configure(config_or_backend: MinimaLlmConfig | OpenAIMinimaLlm | None = None, **settings: Any) -> OpenAIMinimaLlm:
    """Set the default backend from a config, a backend, or settings (which win over the environment).

    Returns the backend now in use. ``configure(model="other")`` keeps the environment's other
    settings and changes the model.
    """
    from ..engine.backend import OpenAIMinimaLlm  # the engine loads on first use

    if isinstance(config_or_backend, OpenAIMinimaLlm):
        if settings:
            raise ConfigError("pass either a backend or settings to configure(), not both.")
        backend = config_or_backend
    elif isinstance(config_or_backend, MinimaLlmConfig):
        config = config_or_backend.replace(**settings) if settings else config_or_backend
        backend = OpenAIMinimaLlm(config)
    elif config_or_backend is None:
        backend = OpenAIMinimaLlm(MinimaLlmConfig.from_env(**settings))
    else:
        raise ConfigError(
            f"configure() takes a MinimaLlmConfig or an OpenAIMinimaLlm, not {type(config_or_backend).__name__}."
        )
    global _default
    with _lock:
        previous, _default = _default, backend
    if previous is not None and previous is not backend:
        previous.close()
    return backend


def get_backend() -> OpenAIMinimaLlm:
    """The default backend, built from the environment on first use."""
    global _default
    with _lock:
        if _default is None:
            from ..engine.backend import OpenAIMinimaLlm  # the engine loads on first use

            try:
                _default = OpenAIMinimaLlm(MinimaLlmConfig.from_env())
            except ConfigError as exc:
                raise ConfigError(NOT_CONFIGURED.format(detail=exc)) from None
        return _default


def reset() -> None:
    """Forget the default backend (closing its cache); the next use builds a new one."""
    global _default
    with _lock:
        previous, _default = _default, None
    if previous is not None:
        previous.close()
