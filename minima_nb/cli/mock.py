"""``minima-nb mock-server``: the embedded OpenAI-compatible mock server in the foreground."""

from __future__ import annotations

import argparse
from typing import Any

from .args import fail, fraction, non_negative_float, port, positive_int, wait_for_interrupt


def add_mock_server_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "mock-server",
        help="run the OpenAI-compatible mock server in the foreground",
        description="Serve a fake OpenAI-compatible API (chat completions and models) until "
                    "Ctrl-C. Useful for demos and for trying settings without spending money.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=port, default=8000,
                        help="port to listen on, 0 for any free port (default: %(default)s)")
    parser.add_argument("--latency-ms", type=non_negative_float, default=0.0,
                        help="delay before each answer, in milliseconds (default: 0)")
    parser.add_argument("--rpm", type=positive_int, default=None,
                        help="enforce this many requests per minute (default: no limit)")
    parser.add_argument("--fault-rate", type=fraction, default=0.0,
                        help="probability that a request gets a random fault (default: 0)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for the random faults (default: %(default)s)")
    parser.set_defaults(handler=_cmd_mock_server)


def _cmd_mock_server(args: argparse.Namespace) -> int:
    from ..testing import MockServer

    server = MockServer(host=args.host, port=args.port, latency_s=args.latency_ms / 1000.0,
                        rate_limit=args.rpm, fault_rate=args.fault_rate, seed=args.seed)
    try:
        server.start()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        fail(f"mock-server: cannot listen on {args.host}:{args.port}: {reason}")
        return 1
    url = server.base_url
    print(f"mock server listening on {url} - point a client at it with: "
          f"export OPENAI_BASE_URL={url} OPENAI_MODEL=mock-model  (Ctrl-C stops it)", flush=True)
    try:
        wait_for_interrupt()
    finally:
        server.stop()
    return 0
