"""An embedded OpenAI-compatible mock server with fault injection.

It owns the fake upstream that the demo, the notebooks, the tests and the benchmarks talk to:
``POST /v1/chat/completions`` (also without ``/v1``), ``GET /v1/models``, deterministic
answers derived from the prompt, an optional enforced requests-per-minute limit with
OpenAI-style ``x-ratelimit-*`` headers, and faults that are either scripted per prompt or drawn
at random from a seeded generator.

Rate limiting uses a *sliding* 60-second window of admitted requests. The reset header and
``Retry-After`` both give the time until the oldest request in the window leaves it, i.e. when
the next request will be admitted again. ``rate_window_s`` enforces the same per-minute limit
over a shorter window (as OpenAI does: "60 rpm" may be enforced as 1 request per second), so a
storm test does not need minutes. ``ratelimit_headers=False`` keeps the limit hidden (429s only,
as vLLM gateways and many proxies do), ``retry_after=False`` drops ``Retry-After`` from those
429s too, and ``set_rate_limit`` lowers or raises the limit mid-run.

A prompt in DSPy's chat format (it asks for ``[[ ## field ## ]]`` output fields) is answered in
that format, one deterministic value per field; ``dspy_replies`` picks a well-formed,
sloppy-but-readable or incomplete variant for the parser tests (``replies.DSPY_REPLIES``).

Further fault modes for the reliability suite: ``max_body_bytes`` answers 413 to larger bodies,
``redirect_to`` answers every chat request with a redirect elsewhere, and ``echo_credentials``
quotes the received Authorization header in every error body (as some servers and proxies do).
The provider batch API (``/v1/files``, ``/v1/batches``) lives in :mod:`.files` and
:mod:`.batches`, on a clock sped up by ``batch_time_scale``; ``server.batches`` scripts its faults.

Run it from sync code (``with MockServer() as s:`` runs a private loop in a daemon thread) or
from async code (``async with MockServer() as s:`` runs on the current loop).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from .batches import BatchStore
from .files import FileStore
from .replies import (
    BAD_JSON,
    ERRORS_429,
    FAULT_KINDS,
    MALFORMED_BODY,
    MOCK_MODELS,
    RATE_LIMITED,
    answer_text,
    check_dspy_variant,
    check_kinds,
    content_text,
    count_tokens,
    drop_connection,
    echo_credentials,
    error_response,
    handle_models,
    json_response,
    last_user_text,
    mock_answer,
    openai_duration,
    ratelimit_headers,
    truncate,
)

__all__ = ["FAULT_KINDS", "MOCK_MODELS", "MockServer", "count_tokens", "mock_answer",
           "openai_duration"]

_WINDOW_S = 60.0
_SHUTDOWN_GRACE_S = 0.2  # how long stop() lets in-flight handlers finish before cancelling them


class MockServer:
    """An OpenAI-compatible chat server on 127.0.0.1 with scripted and random faults.

    Counters (``requests_total``, ``requests_for``, ``responses_by_status``,
    ``last_request_headers``, ``last_request_json``) are safe to read from any thread.
    ``responses_by_status`` counts dropped connections under status 0.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, latency_s: float = 0.0,
                 rate_limit: int | None = None, fault_rate: float = 0.0,
                 fault_kinds: Iterable[str] = ("429", "500", "502", "503", "504", "timeout",
                                               "drop", "malformed"),
                 seed: int = 0, ratelimit_headers: bool = True, retry_after: bool = True,
                 timeout_delay_s: float = 30.0,
                 require_api_key: str | None = None,
                 clock: Callable[[], float] = time.monotonic, rate_window_s: float = _WINDOW_S,
                 max_body_bytes: int | None = None, redirect_to: str | None = None,
                 redirect_status: int = 307, echo_credentials: bool = False,
                 batch_time_scale: float = 3600.0, batch_run_s: float = 600.0,
                 dspy_replies: str = "exact") -> None:
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be between 0 and 1, got {fault_rate}")
        if rate_window_s <= 0:
            raise ValueError(f"rate_window_s must be > 0 seconds, got {rate_window_s}")
        self._host, self._requested_port = host, port
        self._latency_s, self._timeout_delay_s = latency_s, timeout_delay_s
        self._fault_rate, self._fault_kinds = fault_rate, check_kinds(fault_kinds)
        self._rng = random.Random(seed)
        self._ratelimit_headers = ratelimit_headers
        self._retry_after = retry_after
        self._api_key = require_api_key
        self._clock = clock
        self._rate_window_s, self._max_body_bytes = rate_window_s, max_body_bytes
        self._redirect = (redirect_status, redirect_to) if redirect_to else None
        self._echo_credentials = echo_credentials
        self._dspy_replies = check_dspy_variant(dspy_replies)
        self._lock = threading.Lock()  # handlers run on the server loop, tests read elsewhere
        self._scripts: dict[str, deque[str]] = {}
        self._window: deque[float] = deque()
        self._rate_limit: int | None = None
        self.set_rate_limit(rate_limit)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.reset_counts()
        self.files = FileStore(self._authorized)  # /v1/files and /v1/batches (see batches.py)
        self.batches = BatchStore(self.files, self._authorized, self._next_fault, time_scale=batch_time_scale,
                                  run_s=batch_run_s, timeout_delay_s=timeout_delay_s, clock=clock)

    def __repr__(self) -> str:  # never shows the required API key
        state = f"url={self.base_url!r}" if self._port else "stopped"
        return f"MockServer({state})"

    # ----- configuration and counters (any thread) -----

    @property
    def port(self) -> int:
        """The port actually bound (valid once started)."""
        if self._port is None:
            raise RuntimeError("MockServer is not running; start it first")
        return self._port

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of the server, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://{self._host}:{self.port}/v1"

    def script(self, prompt: str, faults: list[str]) -> None:
        """Make the next attempts whose last user message is ``prompt`` fail with ``faults``."""
        kinds = check_kinds(faults)
        with self._lock:
            self._scripts.setdefault(prompt, deque()).extend(kinds)

    def set_rate_limit(self, rpm: int | None) -> None:
        """Enforce ``rpm`` requests per minute from now on, lower or higher than before (None
        switches the limit off). Requests already in the window count against the new limit."""
        if rpm is not None and rpm < 1:
            raise ValueError(f"rate_limit must be a positive number of requests/minute, got {rpm}")
        with self._lock:
            self._rate_limit = rpm

    def set_dspy_replies(self, variant: str) -> None:
        """Answer DSPy chat-format prompts in ``variant`` from now on (see ``replies.DSPY_REPLIES``)."""
        self._dspy_replies = check_dspy_variant(variant)

    def reset_counts(self) -> None:
        """Zero every counter (scripts and the rate-limit window are kept)."""
        with self._lock:
            self._requests_total = 0
            self._by_prompt: Counter[str] = Counter()
            self._by_status: Counter[int] = Counter()
            self._last_headers: Any = {}
            self._last_json: dict = {}

    @property
    def requests_total(self) -> int:
        """Every chat request received, whatever its outcome."""
        return self._requests_total

    def requests_for(self, prompt: str) -> int:
        """Chat requests received whose last user message was ``prompt``."""
        with self._lock:
            return self._by_prompt[prompt]

    @property
    def responses_by_status(self) -> dict[int, int]:
        """How many responses were sent per HTTP status (0 = connection dropped)."""
        with self._lock:
            return dict(self._by_status)

    @property
    def last_request_headers(self) -> dict[str, str]:
        """The headers of the last chat request."""
        with self._lock:
            return dict(self._last_headers)

    @property
    def last_request_json(self) -> dict:
        """The JSON body of the last chat request."""
        with self._lock:
            return self._last_json

    # ----- lifecycle -----

    def __enter__(self) -> MockServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> MockServer:
        await self._astart()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._astop()

    def start(self) -> MockServer:
        """Serve from a private event loop in a daemon thread; returns once listening."""
        if self._runner is not None:
            raise RuntimeError("MockServer is already running")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_serve_forever, args=(loop,), daemon=True,
                                  name="minima-nb-mock-server")
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._astart(), loop).result(timeout=30)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            raise
        self._thread_loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        """Stop a server started with ``start()``; in-flight requests are cut off quickly."""
        loop, thread = self._thread_loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._astop(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._thread_loop = self._thread = None

    async def _astart(self) -> None:
        if self._runner is not None:
            raise RuntimeError("MockServer is already running")
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for prefix in ("/v1", ""):
            app.router.add_post(f"{prefix}/chat/completions", self._handle_chat)
            app.router.add_get(f"{prefix}/models", handle_models)
            self.files.routes(app, prefix)
            self.batches.routes(app, prefix)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=_SHUTDOWN_GRACE_S)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._requested_port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def _astop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._port = None

    # ----- request handling (server loop) -----

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = None
        prompt = last_user_text(body.get("messages")) if body else ""
        with self._lock:
            self._requests_total += 1
            self._by_prompt[prompt] += 1
            self._last_headers, self._last_json = request.headers, body or {}
        response: web.StreamResponse
        if self._max_body_bytes is not None and len(raw) > self._max_body_bytes:
            response, status = error_response(413, {}), 413
        elif self._redirect is not None:
            status = self._redirect[0]
            response = web.Response(status=status, headers={"Location": self._redirect[1]})
        else:
            response, status = await self._respond(request, body, prompt)
        if self._echo_credentials and status >= 400 and isinstance(response, web.Response):
            response = echo_credentials(response, request.headers.get("Authorization", ""))
        with self._lock:
            self._by_status[status] += 1
        return response

    def _authorized(self, request: web.Request) -> bool:
        return self._api_key is None or request.headers.get("Authorization") == f"Bearer {self._api_key}"

    async def _respond(self, request: web.Request, body: dict | None,
                       prompt: str) -> tuple[web.StreamResponse, int]:
        if not self._authorized(request):
            return error_response(401, self._rate_check(consume=False)[0]), 401
        headers, retry_after = self._rate_check(consume=True)
        if retry_after is not None:
            if self._retry_after:
                headers = {**headers, "Retry-After": str(retry_after)}
            return error_response(429, headers, RATE_LIMITED), 429
        if body is None:
            error = ("Request body is not a JSON object", "invalid_request_error", None)
            return error_response(400, headers, error), 400
        if self._latency_s > 0:
            await asyncio.sleep(self._latency_s)
        fault = self._next_fault(prompt)
        if fault is None:
            return self._answer(body, headers), 200
        return await self._fault(fault, request, body, headers)

    def _rate_check(self, *, consume: bool) -> tuple[dict[str, str], int | None]:
        """Apply the sliding window (counting this request if ``consume``).

        Returns the rate-limit headers and, when the request is over the limit, Retry-After.
        """
        with self._lock:
            rpm = self._rate_limit
            if rpm is None:
                return {}, None
            now, span = self._clock(), self._rate_window_s
            capacity = max(1, round(rpm * span / _WINDOW_S))  # rpm itself for the 60 s window
            while self._window and self._window[0] <= now - span:
                self._window.popleft()
            admitted = len(self._window) < capacity
            if admitted and consume:
                self._window.append(now)
            reset_s = self._window[0] + span - now if self._window else 0.0
            remaining = max(0, capacity - len(self._window))
        headers = ratelimit_headers(rpm, remaining, reset_s) if self._ratelimit_headers else {}
        return headers, None if admitted else max(1, math.ceil(reset_s))

    def _next_fault(self, prompt: str) -> str | None:
        with self._lock:
            queue = self._scripts.get(prompt)
            if queue:
                return queue.popleft()
            if self._fault_rate > 0 and self._rng.random() < self._fault_rate:
                return self._rng.choice(self._fault_kinds)
        return None

    def _answer(self, body: dict, headers: dict[str, str], *, content: Any = "",
                choices: bool = True, text: str | None = None) -> web.Response:
        """A chat.completion; ``content=None`` sends a null content, ``choices=False`` none;
        ``text`` replaces the usual answer (a scripted unusable JSON)."""
        model = str(body.get("model") or MOCK_MODELS[0])
        raw_messages = body.get("messages")
        messages: list[Any] = raw_messages if isinstance(raw_messages, list) else []
        text = answer_text(body, messages, model, self._dspy_replies) if text is None else text
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        text, finish_reason = truncate(text, max_tokens)
        if content is not None:
            content = text
        prompt_tokens = sum(count_tokens(content_text(m.get("content")))
                            for m in messages if isinstance(m, dict))
        completion_tokens = count_tokens(content or "")
        message = {"role": "assistant", "content": content}
        payload = {
            "id": f"chatcmpl-mock-{self._requests_total}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}]
            if choices else [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        return json_response(200, payload, headers)

    async def _fault(self, kind: str, request: web.Request, body: dict,
                     headers: dict[str, str]) -> tuple[web.StreamResponse, int]:
        if kind == "429":
            # ratelimit_headers=False leaves only Retry-After, so random 429s in a fault mix do
            # not also tell the client "limit 60/min, none left for 1 s" and slow it down.
            limits = ratelimit_headers(self._rate_limit or 60, 0, 1.0) if self._ratelimit_headers else {}
            headers = {**limits, "Retry-After": "1"}
        if kind in ERRORS_429:
            return error_response(429, headers, ERRORS_429[kind]), 429
        if kind == "timeout":
            # stop() cancels this sleep after a short grace period, so shutdown stays quick
            await asyncio.sleep(self._timeout_delay_s)
            return self._answer(body, headers), 200
        if kind == "drop":
            return await drop_connection(request, headers), 0
        if kind == "malformed":
            return web.Response(status=200, text=MALFORMED_BODY, content_type="application/json",
                                headers=headers), 200
        if kind in BAD_JSON:
            return self._answer(body, headers, text=BAD_JSON[kind]), 200
        if kind in ("null", "empty"):
            return self._answer(body, headers, content=None, choices=kind == "null"), 200
        status = int(kind)
        return error_response(status, headers), status


def _serve_forever(loop: asyncio.AbstractEventLoop) -> None:
    """Body of the server thread: run the loop until stopped, then close it without leaks."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        leftovers = asyncio.all_tasks(loop)
        for task in leftovers:
            task.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
