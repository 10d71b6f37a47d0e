"""The answer check: a hook that judges each answer before it is cached, and asks again when it fails.

A caller that wants a certain shape of answer (``df.minima.generate(..., schema=...)``) sets an
:data:`AnswerCheck` for the duration of a batch (:func:`checking`). The backend sends every
request through :func:`send_checked`: an answer the check refuses is asked again as a forced
refresh (a new seed, so a deterministic server does not repeat itself), up to ``max_attempts``
answers in all; the last refusal becomes a :class:`~minima_nb.errors.SchemaMismatch`, which the
backend turns into the row's failure. Only an answer the check accepted is ever stored, so the
cache never holds an answer that did not validate.

The check travels in a :class:`contextvars.ContextVar`, like the batch meter: every worker task
of the batch sees it, and two batches on one backend keep theirs apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

from ..errors import SchemaMismatch
from .wire import ParsedAnswer

T = TypeVar("T")

#: Judges an answer's text: ``None`` when it is acceptable, else the reason it is not.
AnswerCheck = Callable[[str], "str | None"]

#: Answers asked for in all when ``max_attempts`` is 0 ("retry forever" for transport errors):
#: a model that cannot produce the shape will not learn it on the hundredth try.
UNBOUNDED_ROUNDS = 6

current_check: ContextVar[AnswerCheck | None] = ContextVar("minima_nb_answer_check", default=None)

class Sender(Protocol):
    """What :func:`send_checked` needs of the caller: its send and its retry policy."""

    policy: Any

    def send(self, body: bytes, token_estimate: int) -> Awaitable[tuple[ParsedAnswer, float, int]]:
        """The answer to ``body``, its latency and the attempts it took."""


@contextmanager
def checking(check: AnswerCheck | None) -> Iterator[None]:
    """Set ``check`` for the code inside (``None`` leaves no check)."""
    token = current_check.set(check)
    try:
        yield
    finally:
        current_check.reset(token)


async def with_check(check: AnswerCheck | None, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` with ``check`` set: the context is that of the task running ``work``."""
    with checking(check):
        return await work


def send_checked(
    caller: Sender, body: bytes, token_estimate: int, refreshed_body: Callable[[], bytes],
) -> Awaitable[tuple[ParsedAnswer, float, int]]:
    """``caller.send(body)``; while the current check refuses the answer, send ``refreshed_body()``.

    Returns the accepted answer, its latency and the HTTP attempts spent on all rounds; raises
    :class:`SchemaMismatch` (with the last reason, and the start of the last answer as its
    ``body_snippet``) when ``max_attempts`` answers were refused. Without a check (the usual
    call) it is the send itself: no coroutine of its own to pass through on every resumption.
    """
    check = current_check.get()
    if check is None:
        return caller.send(body, token_estimate)
    return _send_until_accepted(caller, check, body, token_estimate, refreshed_body)


async def _send_until_accepted(
    caller: Sender, check: AnswerCheck, body: bytes, token_estimate: int,
    refreshed_body: Callable[[], bytes],
) -> tuple[ParsedAnswer, float, int]:
    answer, latency, attempts = await caller.send(body, token_estimate)
    max_attempts = caller.policy.max_attempts
    rounds = max_attempts if max_attempts > 0 else UNBOUNDED_ROUNDS
    for round_ in range(1, rounds + 1):
        reason = check(answer.text)
        if reason is None:
            return answer, latency, attempts
        if round_ == rounds:
            err = SchemaMismatch(
                f"the answer did not match the schema after {rounds} answer(s): {reason}",
                attempts=attempts)
            err.body_snippet = answer.text[:300]
            raise err
        answer, latency, more = await caller.send(refreshed_body(), token_estimate)
        attempts += more
    raise AssertionError("unreachable")  # the loop returns or raises on its last round
