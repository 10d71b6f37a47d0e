"""DSPy on minima_nb: a ``dspy.LM`` whose engines are minima_nb's backend, a tolerant parser, batches.

Modules: ``engines`` (the sync and async engine objects handed to ``dspy.LM``), ``lm``
(``MinimaLlmDSPyLM``), ``errors`` (minima_nb failures as DSPy's ``LMError`` family), ``parsing``
(``TolerantChatAdapter``), ``program`` (minima-llm's batch helpers) and ``frame``
(``df.minima.predict``). Importing this package without DSPy installed raises an ImportError that
names the extra to install.
"""

from __future__ import annotations

try:
    import dspy  # noqa: F401  (the one place that says what to install when it is missing)
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without dspy
    raise ImportError(
        "minima_nb's DSPy integration needs DSPy: pip install 'minima-nb[dspy]'"
    ) from exc
