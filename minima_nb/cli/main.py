"""The ``minima-nb`` console script: the top-level parser and ``main``.

Each subcommand lives in its own module with an ``add_<name>_command(subparsers)`` that registers
its parser and sets ``handler=`` to a function ``(args) -> int``; ``_build_parser()`` calls them.
Errors a user can cause are reported as one line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys

from .._version import __version__
from .args import PROG, OneLineErrorParser
from .batch import add_batch_command
from .cache import add_cache_command
from .mock import add_mock_server_command
from .proxy import add_proxy_command


def _build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=PROG,
        description="Run thousands of LLM prompts against an OpenAI-compatible API.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                       parser_class=OneLineErrorParser)
    add_mock_server_command(subparsers)
    add_cache_command(subparsers)
    add_batch_command(subparsers)
    add_proxy_command(subparsers)
    return parser


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
