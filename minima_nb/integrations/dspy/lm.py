"""``MinimaLlmDSPyLM``: the predecessor's DSPy LM, rebuilt as a ``dspy.LM`` on the engine interface.

``MinimaLlmDSPyLM(backend)`` is a ``dspy.LM`` (so a ``dspy.BaseLM``) whose engines are
:mod:`.engines`: DSPy formats, parses, records history and usage and runs callbacks; minima_nb
owns everything about the request (cache, pacing, retries, cooldown). DSPy's own cache and
retries are therefore switched off: with them on, every answer would also land in a second
diskcache under ``~/.dspy_cache`` and every failure would be retried twice over.

Generation settings merge in DSPy's order (the LM's, then the predictor's config, then the
call's); DSPy strips its own keys (``rollout_id``...) before the engine sees the request.
"""

from __future__ import annotations

from typing import Any

import dspy

from .engines import MinimaAsyncEngine, MinimaEngine

__all__ = ["MinimaLlmDSPyLM"]

_OWNED = {
    "cache": "minima_nb caches every answer itself (CACHE_DIR); DSPy's cache stays off",
    "num_retries": "minima_nb retries failed requests itself (max_attempts); DSPy's retries stay off",
}


class MinimaLlmDSPyLM(dspy.LM):
    """A DSPy LM that sends every request through a minima_nb backend.

    ``backend`` is an ``OpenAIMinimaLlm`` (or anything with its async ``generate``); ``kwargs``
    are ``dspy.LM``'s (``temperature``, ``max_tokens``, ``callbacks``, other OpenAI parameters),
    except the connection settings (the backend owns the connection) and ``cache`` /
    ``num_retries`` (minima_nb owns those). The DSPy model name is the backend's model.

    >>> lm = MinimaLlmDSPyLM(OpenAIMinimaLlm(MinimaLlmConfig.from_env()))   # doctest: +SKIP
    >>> dspy.configure(lm=lm)                                              # doctest: +SKIP
    """

    def __init__(self, backend: Any, **kwargs: Any) -> None:
        for name, why in _OWNED.items():
            if kwargs.pop(name, None):
                raise ValueError(f"MinimaLlmDSPyLM: {name}= is not accepted: {why}.")
        model = kwargs.pop("model", None) or backend.config.model
        super().__init__(
            model, engine=MinimaEngine(backend), async_engine=MinimaAsyncEngine(backend),
            cache=False, num_retries=0, **kwargs,
        )
        self.backend = backend

    def _get_initial_kwargs(self, *, temperature: Any, max_tokens: Any, **kwargs: Any) -> dict[str, Any]:
        # dspy.LM refuses temperature=0 for model names that look like OpenAI reasoning models
        # (o1, gpt-5...) and renames max_tokens for them; that is the OpenAI API's rule, not an
        # OpenAI-compatible server's, so the plain BaseLM settings are kept.
        initial: dict[str, Any] = dspy.BaseLM._get_initial_kwargs(
            self, temperature=temperature, max_tokens=max_tokens, **kwargs)
        if initial.get("rollout_id") is None:
            initial.pop("rollout_id", None)
        return initial

    def __repr__(self) -> str:
        return f"MinimaLlmDSPyLM(model={self.model!r}, backend={self.backend!r})"
