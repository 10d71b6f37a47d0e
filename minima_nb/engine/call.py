"""One chat request on the wire: paced, sent, classified and retried until it answers or gives up.

:class:`Caller` owns what every attempt shares: the transport (HTTP pools, one per event loop),
the pacer (one per backend, across loops), the retry policy, the cap on requests in flight and
the ``Authorization`` header. It knows nothing of caches or request objects: it is given an
encoded body and returns the parsed answer, or raises the :class:`~minima_nb.errors.CallError`
that ended the last attempt.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

from ..config import MinimaLlmConfig
from ..errors import CallError, ClientError
from .limits import RateLimitInfo
from .looplocal import LoopLocal
from .meter import BatchMeter, current_meter
from .pacer import RatePacer
from .retry import RetryPolicy, classify_status, redact, retry_after_seconds
from .transport import HttpReply, Transport
from .transports import make_transport
from .wire import ParsedAnswer, parse_answer

BODY_SNIPPET_BYTES = 300  # as much of a failed answer's body as a failure keeps


class Caller:
    """Sends encoded chat-completion bodies to ``config.endpoint_url`` with pacing and retries."""

    def __init__(
        self,
        config: MinimaLlmConfig,
        *,
        client: Any = None,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.transport = transport or make_transport(
            config.transport, client=client, compress_gzip=config.compress_gzip
        )
        self.pacer = RatePacer(
            config.rpm,
            cooldown_floor_s=config.cooldown_floor_s,
            cooldown_cap_s=config.cooldown_cap_s,
            cooldown_halflife_s=config.cooldown_halflife_s,
            adaptive=config.adaptive_rpm,
            clock=clock,
            sleep=sleep,
        )
        self.policy = RetryPolicy.from_config(config)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._outstanding: LoopLocal[asyncio.Semaphore] = LoopLocal(
            lambda: asyncio.Semaphore(config.max_outstanding)
        )
        self._url = config.endpoint_url
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self.__headers = headers  # name-mangled: not part of any public surface

    async def send(self, body: bytes, token_estimate: int) -> tuple[ParsedAnswer, float, int]:
        """The answer to ``body``, its latency and the attempts it took; raises the last CallError.

        The error's ``attempts`` is set. Each answer is counted on the running batch's meter.
        """
        meter = current_meter.get()
        attempt = 0
        started: list[float] = []
        while True:
            attempt += 1
            started.append(self._clock())
            try:
                answer, latency = await self._attempt(body, token_estimate)
            except CallError as err:
                err.attempts = attempt
                err.attempt_timestamps = tuple(started)
                if not self.policy.should_retry(err, attempt):
                    raise
                await self._wait_before_retry(err, attempt, meter)
                continue
            if meter is not None:
                meter.answer_received(answer.input_tokens, answer.output_tokens, latency)
            return answer, latency, attempt

    async def aclose(self) -> None:
        """Close this loop's HTTP pool; the caller stays usable."""
        await self.transport.aclose()

    async def _attempt(self, body: bytes, token_estimate: int) -> tuple[ParsedAnswer, float]:
        meter = current_meter.get()
        async with self._outstanding.get():
            # Paced inside the slot: a request that queued for a slot must still ask the pacer
            # when it gets one, or it would go out blind after the first 429s were learned.
            await self.pacer.acquire(token_estimate)
            if meter is not None:
                meter.attempt_started()
            started = self._clock()
            reply: HttpReply | None = None
            try:
                reply = await self.transport.post_json(
                    self._url, body, self.__headers, self.config.timeout_s
                )
            finally:
                if meter is not None:
                    meter.attempt_ended(answered=reply is not None)
        latency = self._clock() - started
        status = reply.status
        info = RateLimitInfo.from_headers(reply.headers)
        # The status first: a 429's cut is taken from the rate before its headers change it.
        wait = retry_after_seconds(reply.headers) if status == 429 else None
        self.pacer.answered(started, status, stated=info is not None, retry_after=wait)
        self.pacer.observe(info)
        try:
            if 200 <= status < 300:
                return parse_answer(reply.body), latency
            if 300 <= status < 400:
                raise ClientError(
                    f"server redirected (HTTP {status}); redirects are not followed so the API key only "
                    "goes to base_url's host: set base_url (OPENAI_BASE_URL) to the final address",
                    status=status,
                )
            raise classify_status(status, reply.body, reply.headers)
        except CallError as err:
            err.body_snippet = self._snippet(reply.body)
            raise

    def _snippet(self, body: bytes) -> str:
        """The start of a body for a failure report, credentials redacted (the API key if the
        server echoed it, and anything key-shaped). Redacted before it is cut, so that a key
        straddling the cut cannot leave its first characters behind."""
        key = self.config.api_key or ""
        window = body[: BODY_SNIPPET_BYTES + len(key) + 64].decode("utf-8", errors="replace")
        return redact(window, (key,))[:BODY_SNIPPET_BYTES]

    async def _wait_before_retry(self, err: CallError, attempt: int, meter: BatchMeter | None) -> None:
        delay = self.policy.delay(err, attempt, self._rng)
        if meter is not None:
            meter.retrying += 1
            meter.last_error = str(err)
        try:
            if self.policy.is_overload(err):
                # The shared cooldown makes every worker (this one included) wait in acquire();
                # sleeping here as well would wait twice for the same signal. Only what the
                # pacer did not make a shared pause (a probe's 429) is slept here.
                alone = self.pacer.overloaded(delay) - self._clock() - self.pacer.cooldown_remaining()
                if alone > 0:
                    await self._sleep(alone)
            else:
                await self._sleep(delay)
        finally:
            if meter is not None:
                meter.retrying -= 1
