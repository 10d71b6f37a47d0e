"""One accessor call as a job: a prompt per output slot, cached rows first, the rest as one batch.

``df.minima.generate`` and ``sweep`` each build a job from their slots (a row's chat messages,
or ``None`` for a row with no prompt). The job asks the backend for the rows it can answer from
its cache in bulk (``backend.lookup``: a key and a text per row, no object), sends the others as
ONE batch through ``backend.run_batched`` (sync on minima_nb's private loop, or on the caller's
loop), and shapes every slot's result into the pandas object the accessor returns, aligned to
the caller's index. The progress display is drawn and closed on the caller's thread.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Coroutine, Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import BatchAborted
from ..types import MinimaLlmFailure, MinimaLlmRequest, MinimaLlmResponse
from . import session
from .batchrun import arun_batch, run_batch
from .preview import prompt_resolver, typed_answer
from .prompts import Messages
from .schema import AnswerSchema
from .typed import typed_result

__all__ = ["DETAIL_DTYPES", "Generation", "MISSING_PROMPT", "PARTIAL_NOTE", "REQUEST_PARAMS",
           "collection_paused"]

#: Columns of ``details=True`` frames, with their (nullable, Parquet-safe) dtypes.
DETAIL_DTYPES: dict[str, str] = {
    "text": "string", "cached": "boolean", "error": "string", "finish_reason": "string",
    "input_tokens": "Int64", "output_tokens": "Int64", "attempts": "Int64",
    "latency_s": "Float64", "model": "string",
}
MISSING_PROMPT = "missing prompt"
REQUEST_PARAMS = ("model", "temperature", "max_tokens")
PARTIAL_NOTE = (
    "minima_nb: the rows that finished are in exc.partial (a details DataFrame aligned to your "
    "index; rows that never ran are <NA>) and in the cache: run the same call again to resume."
)


# -- results -> pandas ------------------------------------------------------------------------


def _detail_row(result: Any, missing: bool) -> dict[str, Any]:
    if type(result) is str:  # a text answered by backend.lookup(text_only=True)
        return {"text": result, "cached": True, "attempts": 0}
    if type(result) is tuple:  # a row answered by backend.lookup(): the cache's stored fields
        text, input_tokens, output_tokens, finish_reason, latency_s, model = result[:6]
        return {"text": text, "cached": True, "finish_reason": finish_reason,
                "input_tokens": input_tokens, "output_tokens": output_tokens, "attempts": 0,
                "latency_s": latency_s, "model": model}
    if isinstance(result, MinimaLlmResponse):
        return {"text": result.text, "cached": result.cached, "finish_reason": result.finish_reason,
                "input_tokens": result.input_tokens, "output_tokens": result.output_tokens,
                "attempts": result.attempts, "latency_s": result.latency_s, "model": result.model}
    if isinstance(result, MinimaLlmFailure):
        return {"cached": False, "error": f"{result.error_type}: {result.message}",
                "attempts": result.attempts, "model": result.model}
    return {"error": MISSING_PROMPT} if missing else {}  # else: never ran (aborted batch)


_TEXT_TYPES = {str, type(None)}  # results that are already a text column's values


def _text(result: Any) -> str | None:
    if type(result) is str:
        return result
    if type(result) is tuple:
        return result[0]
    return result.text if isinstance(result, MinimaLlmResponse) else None


def _details_frame(
    results: Sequence[Any], slots: Sequence[Messages | None], index: pd.Index
) -> pd.DataFrame:
    rows = [_detail_row(r, m is None) for r, m in zip(results, slots, strict=True)]
    data = {name: pd.array([row.get(name) for row in rows], dtype=dtype)
            for name, dtype in DETAIL_DTYPES.items()}
    return pd.DataFrame(data, index=index)


def _failure_warning(results: Sequence[Any], slots: Sequence[Messages | None]) -> str | None:
    failures = [r for r in results if isinstance(r, MinimaLlmFailure)]
    if not failures:
        return None
    missing = sum(m is None for m in slots)
    first = failures[0]
    text = (f"minima: {len(failures):,} of {len(slots):,} rows failed and are <NA> "
            f"(first error: {first.error_type}: {first.message})")
    if missing:
        text += f"; {missing:,} rows had no prompt and were not sent"
    return text + ". Use details=True to see why each row failed."


# -- one batch: requests per slot, run sync or async ------------------------------------------


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value  # np.int64 is not JSON


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a step that makes a few objects per row.

    Those objects (a row's messages, its cached answer) live until the call returns, so with
    100k rows the collector would run hundreds of times over them, and over the whole heap as
    they pile up: measured, a third of a cached re-run. They form no cycles, so nothing is
    lost by collecting later. Only bulk steps are paused, never the network batch itself.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _spread(results: Sequence[Any], positions: Sequence[int], into: list[Any]) -> list[Any]:
    """``into`` with ``results[i]`` written at ``positions[i]``."""
    for position, result in zip(positions, results, strict=True):
        into[position] = result
    return into


def _note_partial(exc: BatchAborted, partial: pd.DataFrame) -> None:
    exc.partial = partial
    if hasattr(exc, "add_note") and PARTIAL_NOTE not in getattr(exc, "__notes__", ()):
        exc.add_note(PARTIAL_NOTE)


# -- the two kinds of call --------------------------------------------------------------------


class _Job:
    """One accessor call: a prompt (or None) per output slot, and a request per prompt to send.

    Rows the backend can answer from its cache in bulk (``backend.lookup``) come back as the
    cache's row tuples and are never turned into requests; only the others are sent.
    """

    label = "minima"
    schema: AnswerSchema | None = None
    cap: Any = None  # the engine's SpendCap when generate(max_cost=/max_tokens_total=) set one
    preview = True  # the live preview under the notebook bar (generate(preview=False) turns it off)

    def setup_sink(self, sink: Any) -> Any:
        """Give a sink that can show them the preview's prompts and the spend against the cap."""
        configure = getattr(sink, "configure", None)
        if callable(configure):
            cap = self.cap
            note = None if cap is None else (
                lambda snapshot: cap.spent(snapshot.input_tokens, snapshot.output_tokens))
            answer_of = None if self.schema is None else typed_answer(self.schema.parse)
            configure(preview=self.preview, prompt_of=self.preview_prompt(), note=note,
                      answer_of=answer_of)
        return sink

    def preview_prompt(self) -> Callable[[str], str]:
        """``request_id`` -> the prompt the preview shows for it."""
        return prompt_resolver(self.slots)

    def __init__(
        self, slots: list[Messages | None], params_of: Callable[[int], dict[str, Any]]
    ) -> None:
        self.slots = slots
        self.params_of = params_of

    def guard(self, work: Coroutine[Any, Any, Any]) -> Coroutine[Any, Any, Any]:
        """The batch's coroutine with this call's schema check and spend cap set around it."""
        if self.cap is not None:
            from ..engine.budget import capped  # engine modules load on first use

            work = capped(self.cap, work)
        if self.schema is None:
            return work
        from ..engine.validation import with_check

        return with_check(self.schema.check, work)

    def shape(self, results: list[Any], details: bool) -> tuple[Any, str | None]:
        """(the pandas result, a warning to show or None) from one result per slot."""
        raise NotImplementedError

    def lookup(self, backend: Any, force_refresh: bool, text_only: bool) -> list[Any]:
        """Per slot, its cached row (or text) when answered without sending, else None."""
        return [None] * len(self.slots)

    def lookup_keyed(self, backend: Any, force_refresh: bool, text_only: bool) -> tuple[list[Any], list[Any] | None]:
        """:meth:`lookup`, and per slot the cache key it was looked up under (None as a whole
        when the backend does not say): the batch then sends the misses under those keys."""
        return self.lookup(backend, force_refresh, text_only), None

    def spend_groups(self, hits: list[Any]) -> list[tuple[list[Any], list[Any], dict[str, Any]]]:
        """The slots as groups sharing their request fields, for the estimate: (slots, hits, fields)."""
        return [(self.slots, hits, self.params_of(0))]

    def _requests(self, positions: Sequence[int]) -> list[MinimaLlmRequest]:
        """A request per position; ``positions`` name only slots with messages (``_prepare``)."""
        requests = []
        for p in positions:
            messages = self.slots[p]
            if messages is None:
                raise ValueError(f"slot {p} has no prompt to send")
            requests.append(MinimaLlmRequest(request_id=f"row-{p}", messages=messages,
                                             **self.params_of(p)))
        return requests

    def _prepare(
        self, backend: Any, force_refresh: bool, details: bool
    ) -> tuple[list[Any], list[int], list[MinimaLlmRequest], int, list[str] | None]:
        """(per slot its cached row or None, positions to send, their requests, cached count,
        the requests' cache keys when the lookup made them)."""
        with collection_paused():
            hits, keys = self.lookup_keyed(backend, force_refresh, text_only=not details)
            unanswered = hits.count(None)
            # A slot without messages has no hit either: equal counts mean nothing to send (a
            # re-run), which spares looking at each row.
            positions = [p for p, (messages, hit) in enumerate(zip(self.slots, hits, strict=True))
                         if messages is not None and hit is None] if unanswered > self.slots.count(None) else []
            sent_keys = None if keys is None else [keys[p] for p in positions]
            return hits, positions, self._requests(positions), len(hits) - unanswered, sent_keys

    def _shape(
        self, answers: list[Any], positions: list[int], hits: list[Any], details: bool
    ) -> tuple[Any, str | None]:
        with collection_paused():
            return self.shape(_spread(answers, positions, hits), details)

    def _aborted(self, exc: BatchAborted, backend: Any, force_refresh: bool, hits: list[Any],
                 positions: list[int]) -> None:
        if any(type(hit) is str for hit in hits):  # text-only hits: the details need their rows
            rows = self.lookup(backend, force_refresh, text_only=False)
            hits = [hit if row is None else row for hit, row in zip(hits, rows, strict=True)]
        _note_partial(exc, self.shape(_spread(exc.results, positions, hits), True)[0])

    def run(
        self, backend: Any, *, details: bool, progress: Any, force_refresh: bool
    ) -> tuple[Any, str | None]:
        if self.slots.count(None) == len(self.slots):  # no prompt: no backend, no network, no bar
            return self.shape([None] * len(self.slots), details)
        started = time.monotonic()
        backend = session.get_backend() if backend is None else backend
        hits, positions, requests, cached, keys = self._prepare(backend, force_refresh, details)
        try:
            answers = run_batch(backend, requests, progress=progress, force_refresh=force_refresh,
                           label=self.label, cached_rows=cached, guard=self.guard,
                           setup=self.setup_sink, started=started, keys=keys)
        except BatchAborted as exc:
            self._aborted(exc, backend, force_refresh, hits, positions)
            raise
        return self._shape(answers, positions, hits, details)

    async def arun(
        self, backend: Any, *, details: bool, progress: Any, force_refresh: bool
    ) -> tuple[Any, str | None]:
        if self.slots.count(None) == len(self.slots):
            return self.shape([None] * len(self.slots), details)
        started = time.monotonic()
        backend = session.get_backend() if backend is None else backend
        # Off the caller's loop: a large lookup reads SQLite for a while.
        import asyncio  # loaded on first use, like the engine: keeps `import minima_nb` cheap

        hits, positions, requests, cached, keys = await asyncio.to_thread(self._prepare, backend,
                                                                           force_refresh, details)
        try:
            answers = await arun_batch(backend, requests, progress=progress, force_refresh=force_refresh,
                                  label=self.label, cached_rows=cached, guard=self.guard,
                                  setup=self.setup_sink, started=started, keys=keys)
        except BatchAborted as exc:
            self._aborted(exc, backend, force_refresh, hits, positions)
            raise
        return self._shape(answers, positions, hits, details)


class Generation(_Job):
    """``generate``: one slot per row, the same parameters for every request."""

    def __init__(
        self,
        slots: list[Messages | None],
        index: pd.Index,
        name: Hashable | None,
        params: dict[str, Any],
        schema: AnswerSchema | None = None,
    ) -> None:
        extra = params.get("extra")
        if extra is not None and not isinstance(extra, Mapping):
            raise TypeError(f"extra must be a dict of OpenAI parameters, not {type(extra).__name__}")
        self.params = params = {k: _plain(v) for k, v in params.items()}
        if schema is not None:  # the schema is asked for in extra (so keyed) or in the prompt
            slots = schema.prompted(slots)
            params["extra"] = schema.merged_extra(params.get("extra"))
        super().__init__(slots, lambda _: params)
        self.index, self.name, self.schema = index, name, schema

    def lookup(self, backend: Any, force_refresh: bool, text_only: bool) -> list[Any]:
        # Every row shares its request fields, so the backend can find the cached ones in bulk
        # (a key per row and batched reads, no object per row): a cached re-run never builds
        # a request or a response.
        bulk_lookup = getattr(backend, "lookup", None)
        if force_refresh or bulk_lookup is None:
            return super().lookup(backend, force_refresh, text_only)
        return bulk_lookup(self.slots, text_only=text_only, **self.params)

    def lookup_keyed(self, backend: Any, force_refresh: bool, text_only: bool) -> tuple[list[Any], list[Any] | None]:
        keyed_lookup = getattr(backend, "lookup_keyed", None)
        if force_refresh or keyed_lookup is None:  # a backend of its own: lookup() alone, if any
            return super().lookup_keyed(backend, force_refresh, text_only)
        hits, keys = keyed_lookup(self.slots, text_only=text_only, **self.params)
        return hits, keys

    def shape(self, results: list[Any], details: bool) -> tuple[Any, str | None]:
        if self.schema is not None:
            info = _details_frame(results, self.slots, self.index) if details else None
            return typed_result(self.schema, results, _text, info, self.index,
                                _failure_warning(results, self.slots))
        if details:
            return _details_frame(results, self.slots, self.index), None
        # Only the text is wanted: skip building the eight other columns (a cached re-run of a
        # large frame spends most of its time here otherwise). Failures and missing are <NA>.
        # A re-run's results are all texts (or None): then they are the column as they are.
        plain = set(map(type, results)) <= _TEXT_TYPES
        # From an object array: pandas then skips inferring the list's type (measured 9x faster).
        texts = np.array(results if plain else [_text(r) for r in results], dtype=object)
        text = pd.Series(pd.array(texts, dtype=DETAIL_DTYPES["text"]), index=self.index, name=self.name)
        return text, None if plain else _failure_warning(results, self.slots)
