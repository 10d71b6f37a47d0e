"""The proxy's HTTP face: the aiohttp.web application, its routes, the token check, the size limit.

Routes: ``POST /v1/chat/completions`` (also ``/chat/completions``), ``GET /v1/models`` (also
``/models``: the upstream's list, or the configured model when the upstream has none to give or
``force_model`` is set), ``GET /health`` and ``GET /metrics``; anything else is an OpenAI-shaped 404 (or
405 for a known path with the wrong method). Every refusal is a clear 4xx and none of them stops
the server; an unexpected fault in one request is that request's 500.

The token, when set, is required on every route but ``/health`` as ``Authorization: Bearer
<token>`` and compared in constant time. The client's Authorization header is read for that
check only: the upstream request is built by the engine from the configured key alone.
Responses never carry the upstream key: what the proxy passes on from upstream (bodies, error
messages) is scrubbed of it, on top of the engine's own masking.
"""

from __future__ import annotations

import hmac
import json
import logging

from aiohttp import web

from ...engine.transport import Transport
from ...errors import TransportError
from ...types import MinimaLlmFailure, MinimaLlmResponse
from .hits import ParsedBodies, StoredHit
from .metrics import ProxyMetrics
from .relay import Relay
from .translate import (
    ChatCall,
    ProxyRequestError,
    chat_call,
    completion_body,
    encode_json,
    error_body,
    failure_status,
    no_cache_requested,
    scrub,
    sse_body,
)

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ProxyApp"]

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # room for a few base64 images in one chat request
CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
_ROUTES = "POST /v1/chat/completions, GET /v1/models, GET /health and GET /metrics"
_JSON = "application/json"
_SSE = "text/event-stream"
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
_NO_RETRY = {"x-should-retry": "false"}
_log = logging.getLogger(__name__)


def _models_url(base_url: str) -> str:
    """``GET /models`` beside the configured chat endpoint: ``.../v1`` gets ``/models``."""
    base = base_url.rstrip("/").removesuffix("/chat/completions")
    return base + "/models" if base.endswith("/v1") else base + "/v1/models"


class ProxyApp:
    """The request handlers of one proxy and the application that routes to them."""

    def __init__(self, relay: Relay, metrics: ProxyMetrics, *, token: str | None = None,
                 force_model: bool = False, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 verbose: bool = False, upstream: Transport | None = None) -> None:
        self.relay = relay
        self.metrics = metrics
        self._expected = f"Bearer {token}".encode() if token else None
        self._force_model = force_model
        self._max_body_bytes = max_body_bytes
        self._verbose = verbose
        config = relay.backend.config
        self._model = config.model
        self._secret = config.api_key
        self._secret_bytes = config.api_key.encode("utf-8") if config.api_key else None
        self._ids = 0
        self._upstream = upstream  # for GET /models; chat requests go through the relay
        self._models_url = _models_url(config.base_url)
        self.__models_headers = {"Accept": "application/json",  # name-mangled: holds the key
                                 **({"Authorization": f"Bearer {config.api_key}"} if config.api_key else {})}
        self._models_timeout_s = min(10.0, config.timeout_s)
        self._parsed = ParsedBodies()
        self._answer_headers = {True: {"x-minima-cache": "hit"}, False: {"x-minima-cache": "miss"}}
        self._stream_headers = {hit: {**h, "Cache-Control": "no-cache"}
                                for hit, h in self._answer_headers.items()}

    def application(self) -> web.Application:
        """A fresh aiohttp application serving this proxy's routes."""
        # The limit is checked by the handler (to answer it in OpenAI's shape); aiohttp's own
        # check, one byte higher, guards bodies that arrive without a Content-Length.
        app = web.Application(client_max_size=self._max_body_bytes + 1)
        for path in CHAT_PATHS:
            app.router.add_post(path, self._chat)
        for path in ("/v1/models", "/models"):
            app.router.add_get(path, self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        return app

    # -- routes -----------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return self._unauthorized()
        metrics = self.metrics
        metrics.requests += 1
        metrics.in_flight += 1
        try:
            return await self._answer(request)
        except ProxyRequestError as err:
            return self._error(err.status, err.message, param=err.param, code=err.code)
        except Exception as exc:  # one request's fault, never the server's end
            _log.exception("proxy: a chat request failed")
            return self._error(500, scrub(f"the proxy failed on this request: {type(exc).__name__}: "
                                          f"{exc}", self._secret), retry=True)
        finally:
            metrics.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.Response:
        raw = await self._read_body(request)
        self._ids += 1
        call, key = self._call_of(raw)
        cache_control = request.headers.get("Cache-Control")
        refresh = call.no_cache or (cache_control is not None and no_cache_requested(cache_control))
        result, hit = await self.relay.answer(call.request, refresh, identity=(call.request.model, raw),
                                              cached_key=key)
        if self._verbose:
            outcome = "failed" if isinstance(result, MinimaLlmFailure) else "hit" if hit else "miss"
            print(f"  [{call.request.request_id}] {outcome} {call.request.model}", flush=True)
        if isinstance(result, StoredHit):
            body = None if call.stream else result.body()
            if body is not None:  # the stored upstream body, sent as it is
                return self._response(body, _JSON, self._answer_headers[True])
            result = result.response(call.request.request_id)
        if isinstance(result, MinimaLlmFailure):
            return self._failure(result)
        assert isinstance(result, MinimaLlmResponse)
        completion = completion_body(result)
        if call.stream:
            payload = sse_body(completion, result.text, call.include_usage)
            return self._response(payload, _SSE, self._stream_headers[hit])
        return self._response(encode_json(completion), _JSON, self._answer_headers[hit])

    def _call_of(self, raw: bytes) -> tuple[ChatCall, str | None]:
        """The request ``raw`` asks for, and its cache key when the body was seen before.

        A body seen before is nearly always a hit and a new one nearly always a miss, so only
        the first is worth a lookup before the backend (which looks up the second anyway). A
        body's bytes are remembered on its first visit, its parse and key on its second.
        """
        memo = self._parsed
        known = memo.get(raw)
        if known is None:
            call = self._parse(raw)
            if not memo.seen(raw):
                memo.remember(raw)
                return call, None
            known = (call, self.relay.key(call.request))
            memo.remember(raw, known)
            return known
        call, key = known
        if self._verbose:  # a fresh request id to print
            call = self._parse(raw)
        return call, key

    def _parse(self, raw: bytes) -> ChatCall:
        return chat_call(self._decode(raw), f"proxy-{self._ids}", default_model=self._model,
                         force_model=self._force_model)

    async def _models(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return self._unauthorized()
        listed = None if self._force_model else await self._upstream_models()
        if listed is not None:
            return self._response(listed, _JSON, {})
        data = [{"id": self._model, "object": "model", "created": 0, "owned_by": "minima-nb"}]
        return self._response(encode_json({"object": "list", "data": data}), _JSON, {})

    async def _upstream_models(self) -> bytes | None:
        """The upstream's model list as it sent it, or None when it gives no usable one."""
        if self._upstream is None:
            return None
        try:
            reply = await self._upstream.request("GET", self._models_url, headers=self.__models_headers,
                                                 timeout_s=self._models_timeout_s)
            listed = json.loads(reply.body) if reply.status == 200 else None
        except (TransportError, ValueError, UnicodeDecodeError):
            return None
        ok = isinstance(listed, dict) and isinstance(listed.get("data"), list)
        return reply.body if ok else None

    async def _health(self, request: web.Request) -> web.Response:
        return self._response(b'{"status":"ok"}', _JSON, {})

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return self._unauthorized()
        return web.Response(body=self.metrics.prometheus().encode("utf-8"),
                            headers={"Content-Type": _PROMETHEUS})

    async def _unknown(self, request: web.Request) -> web.Response:
        known = {**dict.fromkeys(CHAT_PATHS, "POST"), "/v1/models": "GET", "/models": "GET",
                 "/health": "GET", "/metrics": "GET"}
        allowed = known.get(request.path)
        if allowed is not None:
            return self._error(405, f"{request.method} is not allowed on {request.path}; use {allowed}",
                               code="method_not_allowed", headers={"Allow": allowed})
        return self._error(404, f"unknown route {request.method} {request.path[:200]}; this proxy "
                           f"serves {_ROUTES}", code="unknown_url")

    # -- helpers ----------------------------------------------------------------------------

    def _allowed(self, request: web.Request) -> bool:
        if self._expected is None:
            return True
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, self._expected)

    def _unauthorized(self) -> web.Response:
        return self._error(401, "missing or wrong proxy token: send the header 'Authorization: "
                           "Bearer <token>' with the token the proxy was started with "
                           "(MINIMA_PROXY_TOKEN); with openai-python that is api_key=<token>",
                           code="invalid_proxy_token", headers={"WWW-Authenticate": "Bearer"})

    async def _read_body(self, request: web.Request) -> bytes:
        """The body as received, within the size limit."""
        limit = self._max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise self._too_large()
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise self._too_large() from None
        if len(raw) > limit:
            raise self._too_large()
        return raw

    def _too_large(self) -> ProxyRequestError:
        return ProxyRequestError(
            413, f"the request body is larger than this proxy's limit of {self._max_body_bytes:,} "
                 "bytes (max_body_bytes)", code="request_too_large")

    @staticmethod
    def _decode(raw: bytes) -> object:
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProxyRequestError(400, f"the request body is not valid JSON ({exc}); send a "
                                    "chat-completions request as a JSON object") from None

    def _failure(self, failure: MinimaLlmFailure) -> web.Response:
        message = (f"upstream call failed after {failure.attempts} attempt(s): "
                   f"{failure.error_type}: {failure.message}")
        return self._error(failure_status(failure), scrub(message, self._secret),
                           code=failure.error_type, retry=failure.retryable,
                           headers={"x-minima-cache": "miss"})

    def _error(self, status: int, message: str, *, param: str | None = None,
               code: str | None = None, retry: bool = False,
               headers: dict[str, str] | None = None) -> web.Response:
        """An OpenAI-shaped error; ``retry=False`` adds ``x-should-retry: false`` so that
        openai-python and LiteLLM do not send again what cannot succeed."""
        self.metrics.errors += 1
        extra = {**(headers or {}), **({} if retry else _NO_RETRY)}
        return self._response(error_body(status, message, param=param, code=code), _JSON, extra,
                              status=status)

    def _response(self, body: bytes, content_type: str, headers: dict[str, str], *,
                  status: int = 200) -> web.Response:
        secret = self._secret_bytes
        if secret is not None and secret in body:  # an upstream that echoed the key back
            body = body.replace(secret, b"[redacted]")
        return web.Response(body=body, status=status, headers=headers, content_type=content_type)
