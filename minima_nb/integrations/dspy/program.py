"""Running a DSPy program over many inputs: minima-llm's batch helpers, with the same signatures.

``run_dspy_batch`` (async) and ``run_dspy_batch_generic`` (sync: works in a script and inside a
running Jupyter kernel, where minima-llm's ``asyncio.run`` failed) run a predictor over a list of
objects as ONE batch on minima_nb's engine (``max_outstanding`` rows in flight, the failure
budget, progress), with ``TolerantChatAdapter``. A row whose answer cannot be parsed is asked
again with a forced refresh and a new retry seed (attempt n sends seed n), up to ``max_attempts``
tries; a request that failed for good is not retried again here (minima_nb already retried it).
``print_dspy_prompt`` shows the messages a signature sends for some inputs.

:func:`predict_with_retries` is the per-row step, shared with ``df.minima.predict``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import dspy

from ...config import MinimaLlmConfig
from ...controls import reset_force_refresh, reset_retry_seed, set_force_refresh, set_retry_seed
from ...types import MinimaLlmFailure
from .lm import MinimaLlmDSPyLM
from .parsing import TolerantChatAdapter

__all__ = ["predict_with_retries", "print_dspy_prompt", "run_dspy_batch", "run_dspy_batch_generic"]

T = TypeVar("T")
_MESSAGE_CHARS = 400  # a parse error quotes the whole completion; a row's reason needs less


@contextlib.contextmanager
def _retry_controls(attempt: int) -> Iterator[None]:
    """From the second attempt on: skip the cache and ask for the attempt's own sample."""
    if attempt == 0:
        yield
        return
    force, seed = set_force_refresh(True), set_retry_seed(attempt)
    try:
        yield
    finally:
        reset_retry_seed(seed)
        reset_force_refresh(force)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 3] + "..."


async def predict_with_retries(
    program: Any, inputs: Mapping[str, Any], *, max_attempts: int, request_id: str
) -> Any:
    """``await program.acall(**inputs)``; a parse failure is retried (forced refresh, seed n).

    Returns the prediction, or a :class:`MinimaLlmFailure` when every attempt failed to parse
    (``error_type="AdapterParseError"``) or a request failed for good (its minima_nb failure).
    Programming errors propagate.
    """
    attempts = max(1, max_attempts)
    for attempt in range(attempts):
        with _retry_controls(attempt):
            try:
                return await program.acall(**inputs)
            except dspy.AdapterParseError as exc:
                last: BaseException = exc
            except dspy.LMError as exc:
                failure = getattr(exc, "minima_failure", None)
                if isinstance(failure, MinimaLlmFailure):
                    return failure
                return MinimaLlmFailure(request_id, type(exc).__name__, _short(exc), status=exc.status,
                                        attempts=attempt + 1)
    return MinimaLlmFailure(request_id, "AdapterParseError", _short(last), attempts=attempts)


def _inputs(obj: Any, names: Sequence[str]) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return {name: obj[name] for name in names if name in obj}
    if hasattr(obj, "model_dump"):  # a pydantic model, as minima-llm expected
        dumped: dict[str, Any] = obj.model_dump(include=set(names))
        return dumped
    return {name: getattr(obj, name) for name in names if hasattr(obj, name)}


def _row_job(
    signature_class: Any, objs: Sequence[T], output_converter: Callable[[Any, T], None], backend: Any,
    predictor_class: Any,
) -> tuple[list[tuple[int, T]], Callable[[tuple[int, T]], Any]]:
    lm = MinimaLlmDSPyLM(backend)
    adapter = TolerantChatAdapter()
    names = list(signature_class.input_fields)
    predictor = predictor_class(signature_class)
    max_attempts = int(getattr(backend.config, "max_attempts", 1))

    async def one(item: tuple[int, T]) -> Any:
        index, obj = item
        with dspy.context(lm=lm, adapter=adapter):
            result = await predict_with_retries(predictor, _inputs(obj, names), max_attempts=max_attempts,
                                                request_id=f"row-{index}")
        if isinstance(result, MinimaLlmFailure):
            return result
        output_converter(result, obj)
        return obj

    return list(enumerate(objs)), one


def _objects_or_raise(results: list[Any]) -> list[Any]:
    failures = [r for r in results if isinstance(r, MinimaLlmFailure)]
    if failures:
        shown = "\n  ".join(f"{f.request_id}: {f.error_type}: {f.message}" for f in failures[:5])
        raise RuntimeError(
            f"{len(failures)} of {len(results)} DSPy predictions failed (the others are in the cache; "
            f"running again resumes):\n  {shown}")
    return results


async def run_dspy_batch(
    signature_class: Any,
    annotation_objs: list[T],
    output_converter: Callable[[Any, T], None],
    backend: Any,
    predictor_class: Any = dspy.ChainOfThought,
    *,
    progress: Any = True,
) -> list[T]:
    """Predict every object's outputs with ``predictor_class(signature_class)``, as one batch.

    Each object (a pydantic model, a dict, or any object) gives the signature's input fields;
    ``output_converter(prediction, obj)`` writes the outputs into it. Returns the objects in
    order. Raises ``RuntimeError`` listing the rows that failed after the batch ran (every other
    answer is cached), ``BatchAborted`` when the failure budget ran out.
    """
    from ...notebook.predict import arun_rows

    items, one = _row_job(signature_class, annotation_objs, output_converter, backend, predictor_class)
    return _objects_or_raise(await arun_rows(backend, items, one, progress=progress, label="dspy"))


def run_dspy_batch_generic(
    data: list[T],
    signature: Any,
    converter: Callable[[Any, T], None],
    llm_config: MinimaLlmConfig,
) -> list[T]:
    """Sync :func:`run_dspy_batch` with ``dspy.ChainOfThought`` on a backend built from ``llm_config``.

    Works in a script and in a running Jupyter kernel (the batch runs on minima_nb's own loop).
    minima-llm's Parasail batch mode is not available here: with ``parasail.prefix`` set the rows
    run live, with a warning.
    """
    if not data:
        return data
    from ...engine.backend import OpenAIMinimaLlm
    from ...engine.sync import run_sync
    from ...notebook.predict import run_rows

    if getattr(llm_config.parasail, "prefix", None):
        warnings.warn("run_dspy_batch_generic: Parasail batch mode is not supported by minima_nb; "
                      "the rows run live", UserWarning, stacklevel=2)
    backend = OpenAIMinimaLlm(llm_config)
    try:
        items, one = _row_job(signature, data, converter, backend, dspy.ChainOfThought)
        return _objects_or_raise(run_rows(backend, items, one, progress=True, label="dspy"))
    finally:
        run_sync(backend.aclose())
        backend.close()


def print_dspy_prompt(sig: Any, inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """Print (and return) the chat messages ``sig`` sends for ``inputs``, with the configured
    adapter (``TolerantChatAdapter`` formats like DSPy's ChatAdapter when none is)."""
    adapter = dspy.settings.adapter or TolerantChatAdapter()
    messages: list[dict[str, Any]] = adapter.format(signature=dspy.Predict(sig).signature, demos=[], inputs=inputs)
    for message in messages:
        print(f"--- {message['role']} ---\n{message['content']}\n")
    return messages
