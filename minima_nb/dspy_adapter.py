"""DSPy on minima_nb, under minima-llm's import path: ``from minima_nb.dspy_adapter import MinimaLlmDSPyLM``.

The code lives in :mod:`minima_nb.integrations.dspy`; importing this module without DSPy says
``pip install 'minima-nb[dspy]'``. Importing it never configures DSPy (no global adapter).
"""

from __future__ import annotations

from .integrations.dspy.lm import MinimaLlmDSPyLM
from .integrations.dspy.parsing import AdapterParseError, TolerantChatAdapter
from .integrations.dspy.program import print_dspy_prompt, run_dspy_batch, run_dspy_batch_generic

__all__ = ["AdapterParseError", "MinimaLlmDSPyLM", "TolerantChatAdapter", "print_dspy_prompt", "run_dspy_batch",
           "run_dspy_batch_generic"]
