"""A minimal, fast OpenAI-compatible upstream for the throughput benchmarks.

The embedded mock server (``minima_nb.testing.MockServer``, aiohttp.web) serves about 10k
requests/s, which is close to what a raw aiohttp client can send, so it could become the
bottleneck it is meant to stay out of. This one is a bare ``asyncio.Protocol`` with the
``httptools`` request parser: HTTP/1.1 keep-alive, ``POST /v1/chat/completions`` (also without
``/v1``) answered with the same chat.completion JSON shape (in DSPy's chat format when the prompt
asks for it, as the embedded mock does), ``GET /v1/models``, and an optional
fixed latency per answer (a timer, not a sleeping task).

Run it on its own core::

    taskset -c 1 python -m benchmarks.upstream --latency-ms 50

It prints ``LISTENING <port>`` once bound, then serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

import httptools

from minima_nb.servers.mock.replies import dspy_answer

MODEL = "mock-model"
_JSON_HEADERS = "Content-Type: application/json\r\n"


def _head(status: str, length: int, keep_alive: bool) -> bytes:
    connection = "keep-alive" if keep_alive else "close"
    return (f"HTTP/1.1 {status}\r\n{_JSON_HEADERS}Content-Length: {length}\r\n"
            f"Connection: {connection}\r\n\r\n").encode("ascii")


def _last_user_text(messages: object) -> str:
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                return content if isinstance(content, str) else ""
    return ""


class Upstream:
    """Builds the answers; one instance is shared by every connection."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.served = 0

    def answer(self, method: bytes, url: bytes, body: bytes) -> tuple[str, bytes]:
        """(status line, JSON body) for one request."""
        path = url.split(b"?", 1)[0]
        if method == b"POST" and path in (b"/v1/chat/completions", b"/chat/completions"):
            return self._chat(body)
        if method == b"GET" and path in (b"/v1/models", b"/models"):
            models = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                                   "owned_by": "bench"}]}
            return "200 OK", json.dumps(models).encode()
        error = {"error": {"message": "not found", "type": "invalid_request_error"}}
        return "404 Not Found", json.dumps(error).encode()

    def _chat(self, body: bytes) -> tuple[str, bytes]:
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            error = {"error": {"message": "body is not a JSON object", "type": "invalid_request_error"}}
            return "400 Bad Request", json.dumps(error).encode()
        self.served += 1
        prompt = _last_user_text(request.get("messages"))
        # A DSPy chat-format prompt (scenario 9) gets DSPy's format, one value per output field.
        text = dspy_answer(prompt) if "[[ ## " in prompt else None
        if text is None:
            text = f"answer {self.served}: {prompt[:48]}"
        model = request.get("model") if isinstance(request.get("model"), str) else MODEL
        prompt_tokens = max(1, len(prompt.split()))
        completion_tokens = max(1, len(text.split()))
        payload = {
            "id": f"chatcmpl-bench-{self.served}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        return "200 OK", json.dumps(payload, separators=(",", ":")).encode()


class Connection(asyncio.Protocol):
    """One client connection: parse requests with httptools, answer each in order."""

    def __init__(self, upstream: Upstream, loop: asyncio.AbstractEventLoop) -> None:
        self.upstream = upstream
        self.loop = loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        self.transport = None

    def data_received(self, data: bytes) -> None:  # noqa: D102
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:  # noqa: D102
        self.url = b""
        self.body.clear()

    def on_url(self, url: bytes) -> None:  # noqa: D102
        self.url += url

    def on_body(self, body: bytes) -> None:  # noqa: D102
        self.body += body

    def on_message_complete(self) -> None:  # noqa: D102
        status, payload = self.upstream.answer(self.parser.get_method(), self.url, bytes(self.body))
        keep_alive = self.parser.should_keep_alive()
        reply = _head(status, len(payload), keep_alive) + payload
        if self.upstream.latency_s > 0:
            self.loop.call_later(self.upstream.latency_s, self._send, reply, keep_alive)
        else:
            self._send(reply, keep_alive)

    def _send(self, reply: bytes, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(reply)
        if not keep_alive:
            self.transport.close()


async def serve(port: int, latency_s: float) -> None:
    """Listen on 127.0.0.1:``port`` (0 = any free port) until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    upstream = Upstream(latency_s)
    server = await loop.create_server(lambda: Connection(upstream, loop), "127.0.0.1", port,
                                      backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--port`` (default any free one), ``--latency-ms`` (default 0)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.latency_ms / 1000.0))


if __name__ == "__main__":
    sys.exit(main())
