"""The ``minima-nb`` console script: argument parsing and one small function per subcommand.

To add a subcommand, write ``_add_<name>_command(subparsers)`` that registers its parser and
sets ``handler=`` to a function ``(args) -> int``, and call it from ``_build_parser()``.
Errors a user can cause are reported as one line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any, NoReturn

from ._version import __version__

PROG = "minima-nb"


class _OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are a single line on stderr (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog=PROG,
        description="Run thousands of LLM prompts against an OpenAI-compatible API.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                       parser_class=_OneLineErrorParser)
    _add_mock_server_command(subparsers)
    return parser


def _add_mock_server_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "mock-server",
        help="run the OpenAI-compatible mock server in the foreground",
        description="Serve a fake OpenAI-compatible API (chat completions and models) until "
                    "Ctrl-C. Useful for demos and for trying settings without spending money.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=_port, default=8000,
                        help="port to listen on, 0 for any free port (default: %(default)s)")
    parser.add_argument("--latency-ms", type=_non_negative_float, default=0.0,
                        help="delay before each answer, in milliseconds (default: 0)")
    parser.add_argument("--rpm", type=_positive_int, default=None,
                        help="enforce this many requests per minute (default: no limit)")
    parser.add_argument("--fault-rate", type=_fraction, default=0.0,
                        help="probability that a request gets a random fault (default: 0)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for the random faults (default: %(default)s)")
    parser.set_defaults(handler=_cmd_mock_server)


def _cmd_mock_server(args: argparse.Namespace) -> int:
    from .testing import MockServer  # imported here so other subcommands start fast

    server = MockServer(host=args.host, port=args.port, latency_s=args.latency_ms / 1000.0,
                        rate_limit=args.rpm, fault_rate=args.fault_rate, seed=args.seed)
    try:
        server.start()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        _fail(f"mock-server: cannot listen on {args.host}:{args.port}: {reason}")
        return 1
    url = server.base_url
    print(f"mock server listening on {url} - point a client at it with: "
          f"export OPENAI_BASE_URL={url} OPENAI_MODEL=mock-model  (Ctrl-C stops it)", flush=True)
    try:
        _wait_for_interrupt()
    finally:
        server.stop()
    return 0


def _wait_for_interrupt() -> None:
    """Block until Ctrl-C (SIGINT) or, when running in the main thread, SIGTERM."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:  # signal handlers can only be installed from the main thread
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the ``minima-nb`` command line; returns the process exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors end here
        return exc.code if isinstance(exc.code, int) else 1
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
