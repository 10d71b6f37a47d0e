"""``df.minima.predict(program)``: a DSPy program over a DataFrame, one row per row, one column per output.

The program (Predict, ChainOfThought, or any Module making several LM calls) runs once per row
with its input fields read from the same-named columns (or ``inputs={"field": "column"}``). All
rows are ONE batch on the engine (:mod:`minima_nb.notebook.predict`): ``max_outstanding`` rows
in flight rather than DSPy's 8 threads, the progress display of ``generate``, the failure
budget. A row whose program fails (a request that failed for good, an answer that never parses
after ``max_attempts`` forced-refresh retries) is ``<NA>`` with its reason in ``details=True``;
it never costs the other rows. Every LM call is in the prompt cache, so a re-run sends nothing.

The LM is a ``MinimaLlmDSPyLM`` on ``backend`` (default: the backend of a configured
``MinimaLlmDSPyLM``, else ``minima_nb.configure``'s); the adapter is the configured DSPy adapter,
else ``TolerantChatAdapter``.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any

import dspy
import pandas as pd

from ...controls import reset_retry_seed, set_retry_seed
from ...errors import BatchAborted
from ...notebook import session
from ...notebook.batchrun import arun_batch, run_batch
from ...notebook.predict import RowOutputs, arun_rows, outputs_frame, run_rows
from ...notebook.preview import fields_line
from ...notebook.spend import SpendEstimate, estimate, spend_cap
from ...types import MinimaLlmFailure, MinimaLlmResponse
from .direct import DirectPlan, direct_plan
from .engines import CallLog, current_log
from .lm import MinimaLlmDSPyLM
from .parsing import TolerantChatAdapter
from .program import predict_with_retries

__all__ = ["PredictJob"]

LABEL = "minima predict"
PARTIAL_NOTE = (
    "minima_nb: the rows that finished are in exc.partial (aligned to your index) and their LM "
    "calls are in the cache: run the same call again to resume."
)


def _signature(program: Any) -> Any:
    if isinstance(program, dspy.Predict):
        return program.signature
    predictors = program.predictors() if hasattr(program, "predictors") else []
    return predictors[0].signature if len(predictors) == 1 else None


def _input_names(program: Any, signature: Any) -> list[str]:
    if signature is not None:
        return list(signature.input_fields)
    forward = getattr(program, "forward", None)
    params = inspect.signature(forward).parameters.values() if callable(forward) else []
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if named:
        return named
    predictors = program.predictors() if hasattr(program, "predictors") else []
    if predictors:
        return list(predictors[0].signature.input_fields)
    raise TypeError(f"predict: cannot tell the input fields of {type(program).__name__}; pass inputs={{...}}")


def _missing(value: Any) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or an array: a value
        return False


def _default_backend() -> Any:
    lm = dspy.settings.lm
    if isinstance(lm, MinimaLlmDSPyLM):
        return lm.backend
    return session.get_backend()


class PredictJob:
    """One ``df.minima.predict`` call: the rows' inputs, the row coroutine, the result frame."""

    cap: Any = None  # the engine's SpendCap when predict(max_cost=/max_tokens_total=) set one
    preview = True  # the live preview under the notebook bar
    _planned = False  # the direct route is planned once: the rows' messages are formatted once
    _direct: tuple[DirectPlan, list[Any]] | None = None
    _ran: list[Any] | None = None  # the direct route's results so far (for exc.partial)

    def __init__(self, frame: pd.DataFrame, program: Any, inputs: Mapping[str, str] | None,
                 backend: Any, force_refresh: bool) -> None:
        if not callable(getattr(program, "acall", None)):
            raise TypeError(f"predict() takes a DSPy module (dspy.Predict, dspy.ChainOfThought...), "
                            f"not {type(program).__name__}")
        signature = _signature(program)
        columns = dict(inputs) if inputs is not None else {n: n for n in _input_names(program, signature)}
        absent = sorted(f"{field!r} (column {col!r})" for field, col in columns.items() if col not in frame.columns)
        if absent:
            raise KeyError(f"predict: no column for input field(s) {', '.join(absent)}; name the columns "
                           f"with inputs={{'field': 'column'}} (columns: {list(frame.columns)[:20]})")
        self.index = frame.index
        self.outputs = list(signature.output_fields) if signature is not None else []
        data = {field: frame[col].tolist() for field, col in columns.items()}
        self.rows = [{field: data[field][i] for field in columns} for i in range(len(frame))]
        self.program = program
        self.backend = _default_backend() if backend is None else backend
        self.lm = MinimaLlmDSPyLM(self.backend)
        self.adapter = dspy.settings.adapter or TolerantChatAdapter()
        self.force_refresh = force_refresh
        self.info: list[dict[str, Any]] = [{} for _ in self.rows]
        self.todo = []
        for i, row in enumerate(self.rows):
            gaps = [field for field, value in row.items() if _missing(value)]
            if gaps:
                self.info[i] = {"error": f"missing input: {', '.join(gaps)}"}
            else:
                self.todo.append(i)

    async def row(self, position: int) -> Any:
        """Run the program on one row; a failure is returned, never raised (programming errors are)."""
        log = CallLog()
        token = current_log.set(log)
        context: dict[str, Any] = {"lm": self.lm, "adapter": self.adapter}
        if self.force_refresh:
            context["force_refresh"] = True
        try:
            with dspy.context(**context):
                result = await predict_with_retries(
                    self.program, self.rows[position], request_id=f"row-{position}",
                    max_attempts=int(getattr(self.backend.config, "max_attempts", 1)))
        finally:
            current_log.reset(token)
        self.info[position] = {"cached": log.calls > 0 and log.cached == log.calls,
                               "attempts": log.attempts, "input_tokens": log.input_tokens,
                               "output_tokens": log.output_tokens}
        if isinstance(result, MinimaLlmFailure):
            return result
        return RowOutputs(result.items(), cached=self.info[position]["cached"],
                          request_id=f"row-{position}")

    def shape(self, ran: list[Any], details: bool) -> tuple[pd.DataFrame, str | None]:
        results: list[Any] = [None] * len(self.rows)
        for position, result in zip(self.todo, ran, strict=True):
            results[position] = result
        fields = list(self.outputs)
        for result in results:  # a custom Module's outputs are known from its predictions only
            if isinstance(result, Mapping):
                fields += [k for k in result if k not in fields]
        frame = outputs_frame(results, self.index, fields, details, self.info)
        return frame, _warning(results, len(self.rows) - len(self.todo))

    # -- the direct route (direct.py): one run_batched, then parse; parse failures sent again --

    def _direct_requests(self) -> tuple[DirectPlan, list[Any]] | None:
        if not self._planned:
            self._planned = True
            plan = direct_plan(self.program, self.adapter, self.lm, list(self.rows[0]) if self.rows else [])
            requests = [] if plan is None else [plan.request(p, self.rows[p]) for p in self.todo]
            if plan is not None and requests and all(r is not None for r in requests):
                self._direct = (plan, requests)
        return self._direct

    # -- spend: the estimate (DSPy's own formatting, nothing sent) and the cap -----------------

    def _group(self, requests: list[Any]) -> tuple[list[Any], list[Any], dict[str, Any]]:
        slots = [r.messages for r in requests]
        first = requests[0]
        fields = {"temperature": first.temperature, "max_tokens": first.max_tokens, "extra": first.extra}
        lookup = getattr(self.backend, "lookup", None)
        hits = [None] * len(slots) if self.force_refresh or lookup is None else lookup(slots, text_only=True, **fields)
        return slots, hits, fields

    def estimate(self, price: Mapping[str, float] | None, tokenizer: str = "auto") -> SpendEstimate:
        """What this call would send and cost: the adapter formats each row's prompt, nothing is sent."""
        direct = self._direct_requests()
        if direct is None and self.todo:
            raise TypeError(
                f"estimate({type(self.program).__name__}): only dspy.Predict and dspy.ChainOfThought "
                "(with the configured LM, ChatAdapter or TolerantChatAdapter, no callbacks) make one "
                "known prompt per row; another module's calls are known only by running it. Estimate "
                "its inner Predict, or run a few rows (df.head(20).minima.predict(...)) and read the "
                "tokens with details=True")
        return estimate(self.backend, [] if direct is None else [self._group(direct[1])], price, tokenizer)

    def limit(self, max_cost: float | None, max_tokens_total: int | None,
              price: Mapping[str, float] | None) -> None:
        """Cap this call's spend (``predict(max_cost=, price=, max_tokens_total=)``)."""
        if max_cost is None and max_tokens_total is None:
            return
        direct = self._direct_requests()
        guess = None if direct is None else estimate(self.backend, [self._group(direct[1])], None)
        self.cap = spend_cap(guess, max_cost, max_tokens_total, price)

    def _round(self, plan: DirectPlan | None, started: float | None) -> dict[str, Any]:
        """The cap, preview and start time of one batch of this call (a round of the direct route)."""
        spent_in = sum(i.get("input_tokens") or 0 for i in self.info)
        spent_out = sum(i.get("output_tokens") or 0 for i in self.info)
        cap = self.cap

        def guard(work: Any) -> Any:
            from ...engine.budget import capped

            return work if cap is None else capped(cap.less(spent_in, spent_out), work)

        def setup(sink: Any) -> Any:
            configure = getattr(sink, "configure", None)
            if callable(configure):
                note = None if cap is None else (lambda snapshot: cap.spent(
                    spent_in + snapshot.input_tokens, spent_out + snapshot.output_tokens))
                configure(preview=self.preview, prompt_of=self._inputs_line, note=note,
                          answer_of=None if plan is None else _answer_line(plan))
            return sink

        return {"guard": guard, "setup": setup, "started": started}

    def _inputs_line(self, request_id: str) -> str:
        try:
            return fields_line(self.rows[int(str(request_id).rsplit("-", 1)[-1])])
        except (ValueError, IndexError):
            return str(request_id)

    def _settle(self, plan: DirectPlan, answers: list[Any], waiting: list[int], ran: list[Any]) -> list[int]:
        """Record each answer of ``waiting`` (indexes into todo); return those to send again."""
        again = []
        for k, answer in zip(waiting, answers, strict=True):
            if answer is None:  # never ran: the batch stopped first
                continue
            position = self.todo[k]
            info = self.info[position]
            attempts = info.get("attempts", 0) + (getattr(answer, "attempts", 0) or 0)
            cached = isinstance(answer, MinimaLlmResponse) and answer.cached
            billed = isinstance(answer, MinimaLlmResponse) and not answer.cached
            self.info[position] = {
                "cached": cached and not info.get("tried"), "attempts": attempts, "tried": True,
                "input_tokens": _add(info.get("input_tokens"), answer.input_tokens if billed else None),
                "output_tokens": _add(info.get("output_tokens"), answer.output_tokens if billed else None)}
            outputs = plan.outputs(answer)
            if isinstance(outputs, MinimaLlmFailure):
                ran[k] = outputs
                if outputs.error_type == "AdapterParseError":
                    again.append(k)
            else:
                ran[k] = RowOutputs(outputs, cached=cached)
        return again

    def _run_direct(self, plan: DirectPlan, requests: list[Any], progress: Any, started: float) -> list[Any]:
        ran = self._ran = [None] * len(requests)
        waiting = list(range(len(requests)))
        for attempt in range(self._max_attempts()):
            token = set_retry_seed(attempt) if attempt else None  # read by the batch's tasks
            try:
                answers = run_batch(self.backend, [requests[k] for k in waiting], progress=progress,
                                    force_refresh=self.force_refresh or attempt > 0, label=_label(attempt),
                                    cached_rows=0, **self._round(plan, None if attempt else started))
            except BatchAborted as exc:
                self._settle(plan, list(exc.results), waiting, ran)  # what the round answered
                raise
            finally:
                if token is not None:
                    reset_retry_seed(token)
            waiting = self._settle(plan, answers, waiting, ran)
            if not waiting:
                break
        return ran

    async def _arun_direct(self, plan: DirectPlan, requests: list[Any], progress: Any, started: float) -> list[Any]:
        ran = self._ran = [None] * len(requests)
        waiting = list(range(len(requests)))
        for attempt in range(self._max_attempts()):
            token = set_retry_seed(attempt) if attempt else None
            try:
                answers = await arun_batch(self.backend, [requests[k] for k in waiting], progress=progress,
                                           force_refresh=self.force_refresh or attempt > 0,
                                           label=_label(attempt), cached_rows=0,
                                           **self._round(plan, None if attempt else started))
            except BatchAborted as exc:
                self._settle(plan, list(exc.results), waiting, ran)
                raise
            finally:
                if token is not None:
                    reset_retry_seed(token)
            waiting = self._settle(plan, answers, waiting, ran)
            if not waiting:
                break
        return ran

    def _max_attempts(self) -> int:
        return max(1, int(getattr(self.backend.config, "max_attempts", 1)))

    # -- running --------------------------------------------------------------------------------

    def run(self, *, details: bool, progress: Any) -> tuple[pd.DataFrame, str | None]:
        started = time.monotonic()
        direct = self._direct_requests()
        try:
            if direct is not None:
                ran = self._run_direct(*direct, progress, started)
            else:
                ran = run_rows(self.backend, self.todo, self.row, progress=progress, label=LABEL,
                               **self._round(None, started)) if self.todo else []
        except Exception as exc:
            self._note_partial(exc, direct)
            raise
        return self.shape(ran, details)

    async def arun(self, *, details: bool, progress: Any) -> tuple[pd.DataFrame, str | None]:
        started = time.monotonic()
        direct = self._direct_requests()
        try:
            if direct is not None:
                ran = await self._arun_direct(*direct, progress, started)
            else:
                ran = await arun_rows(self.backend, self.todo, self.row, progress=progress,
                                      label=LABEL, **self._round(None, started)) if self.todo else []
        except Exception as exc:
            self._note_partial(exc, direct)
            raise
        return self.shape(ran, details)

    def _note_partial(self, exc: Exception, direct: tuple[DirectPlan, list[Any]] | None) -> None:
        if not isinstance(exc, BatchAborted):
            return
        if direct is not None:  # every round's answers so far, settled and parsed
            results = list(self._ran or [None] * len(self.todo))
        else:
            results = list(exc.results)
        exc.partial = self.shape(results, True)[0]
        if hasattr(exc, "add_note") and PARTIAL_NOTE not in getattr(exc, "__notes__", ()):
            exc.add_note(PARTIAL_NOTE)


def _answer_line(plan: DirectPlan) -> Callable[[str, str], str]:
    """The preview's answer: the parsed output fields on one line (the raw text if it does not parse)."""
    def answer_of(request_id: str, text: str) -> str:
        try:
            return fields_line(plan.adapter.parse(plan.signature, text))
        except Exception:  # an unparsable answer is shown as it came; it is asked again
            return text

    return answer_of


def _label(attempt: int) -> str:
    return LABEL if attempt == 0 else f"{LABEL} (parse retry {attempt})"


def _add(total: int | None, more: int | None) -> int | None:
    return total if more is None else (total or 0) + more


def _warning(results: list[Any], missing: int) -> str | None:
    failures = [r for r in results if isinstance(r, MinimaLlmFailure)]
    if not failures:
        return None
    first = failures[0]
    text = (f"minima predict: {len(failures):,} of {len(results):,} rows failed and are <NA> "
            f"(first error: {first.error_type}: {first.message[:200]})")
    if missing:
        text += f"; {missing:,} rows had a missing input and were not run"
    return text + ". Use details=True to see why each row failed."
