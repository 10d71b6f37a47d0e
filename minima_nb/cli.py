"""The ``minima-nb`` console script: argument parsing and one small function per subcommand.

To add a subcommand, write ``_add_<name>_command(subparsers)`` that registers its parser and
sets ``handler=`` to a function ``(args) -> int``, and call it from ``_build_parser()``.
Errors a user can cause are reported as one line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from ._version import __version__
from .config import setting_from_env

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
    _add_cache_command(subparsers)
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


# -- cache ----------------------------------------------------------------------------------------


def _when(text: str) -> float:
    from .export import to_epoch  # pandas/pyarrow load only when a date is given

    try:
        return to_epoch(text, "date")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_cache_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", metavar="M",
                        help="only rows of this model (repeat for several)")
    parser.add_argument("--namespace", action="append", metavar="NS",
                        help="only rows of this cache namespace (repeat for several)")
    parser.add_argument("--since", type=_when, metavar="DATE",
                        help="only rows stored at or after DATE (ISO 8601; naive means UTC)")
    parser.add_argument("--until", type=_when, metavar="DATE", help="only rows stored before DATE")


def _add_cache_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cache", help="inspect, export, import or clear a prompt cache",
        description="Work with a prompt cache directory (the backend's cache_dir): print its "
                    "stats, export it to Parquet, import a Parquet export, delete rows.")
    parser.set_defaults(handler=_cmd_cache, cache_parser=parser)
    actions = parser.add_subparsers(dest="cache_command", metavar="ACTION",
                                    parser_class=_OneLineErrorParser)
    stats = actions.add_parser("stats", help="rows, models, tokens, size, oldest/newest answer")
    stats.add_argument("dir", nargs="?", metavar="DIR", help="cache directory (default: $CACHE_DIR)")
    stats.set_defaults(handler=_cmd_cache_stats)
    export = actions.add_parser("export", help="write the cache (or a filtered part) to Parquet")
    export.add_argument("dir", metavar="DIR", help="cache directory")
    export.add_argument("out", metavar="OUT.parquet", help="file to write (replaced when complete)")
    _add_cache_filters(export)
    export.add_argument("--no-raw", action="store_true", help="leave out the raw server responses")
    export.set_defaults(handler=_cmd_cache_export)
    imp = actions.add_parser("import", help="merge a Parquet export into a cache")
    imp.add_argument("dir", metavar="DIR", help="cache directory (created if needed)")
    imp.add_argument("source", metavar="IN.parquet", help="a file written by 'cache export'")
    imp.add_argument("--replace", action="store_true",
                     help="overwrite stored answers that differ (default: keep them)")
    imp.set_defaults(handler=_cmd_cache_import)
    clear = actions.add_parser("clear", help="delete rows (all, or those matching the filters)")
    clear.add_argument("dir", metavar="DIR", help="cache directory")
    _add_cache_filters(clear)
    clear.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    clear.set_defaults(handler=_cmd_cache_clear)


def _cmd_cache(args: argparse.Namespace) -> int:
    args.cache_parser.print_help(sys.stderr)
    return 2


def _reports_cache_errors(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a cache, file or value error into one line on stderr and exit code 1."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from .errors import CacheError

        try:
            return handler(args)
        except (CacheError, OSError, ValueError) as exc:
            _fail(f"cache {args.cache_command}: {' '.join(str(exc).split())}")
            return 1

    return run


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "namespace": args.namespace, "since": args.since, "until": args.until}


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _counts(counts: dict[Any, int]) -> str:
    return ", ".join(f"{'(none)' if name is None else name} {n:,}" for name, n in counts.items()) or "-"


@_reports_cache_errors
def _cmd_cache_stats(args: argparse.Namespace) -> int:
    from .export import open_cache

    directory = args.dir or setting_from_env("cache_dir")
    if not directory:
        _fail("cache stats: pass the cache directory (DIR) or set CACHE_DIR")
        return 2
    with open_cache(directory, create=False) as view:
        stats = view.stats()
    lines = [("cache", stats["path"]), ("rows", f"{stats['rows']:,}"),
             ("models", _counts(stats["models"])), ("namespaces", _counts(stats["namespaces"])),
             ("tokens", f"{stats['input_tokens']:,} in, {stats['output_tokens']:,} out"),
             ("size", _size(stats["file_size_bytes"])),
             ("oldest", stats["oldest"] or "-"), ("newest", stats["newest"] or "-")]
    for name, value in lines:
        print(f"{name:<11} {value}")
    return 0


@_reports_cache_errors
def _cmd_cache_export(args: argparse.Namespace) -> int:
    from .export import open_cache

    with open_cache(args.dir, create=False) as view:
        summary = view.to_parquet(args.out, include_raw=not args.no_raw, **_filters(args))
    print(f"exported {summary['rows']:,} rows ({_size(summary['bytes'])}) to {summary['path']}")
    return 0


@_reports_cache_errors
def _cmd_cache_import(args: argparse.Namespace) -> int:
    from .export import check_parquet, open_cache

    check_parquet(args.source)  # before open_cache, which would create an empty cache in DIR
    with open_cache(args.dir) as view:
        counts = view.from_parquet(args.source, on_conflict="replace" if args.replace else "keep")
    invalid = f" ({counts['invalid']:,} without key or text)" if counts["invalid"] else ""
    print(f"imported {args.source} into {args.dir}: {counts['inserted']:,} inserted, "
          f"{counts['replaced']:,} replaced, {counts['skipped']:,} skipped{invalid}")
    return 0


@_reports_cache_errors
def _cmd_cache_clear(args: argparse.Namespace) -> int:
    from .export import open_cache

    with open_cache(args.dir, create=False) as view:
        matching = view.count(**_filters(args))
        if matching == 0:
            print(f"nothing to delete in {args.dir}")
            return 0
        if not args.yes and not _confirm(f"Delete {matching:,} rows from {args.dir}? [y/N] "):
            _fail("cache clear: not confirmed, nothing deleted (pass --yes to skip the question)")
            return 1
        deleted = view.delete(**_filters(args))
    print(f"deleted {deleted:,} rows from {args.dir}")
    return 0


def _confirm(question: str) -> bool:
    """Ask on stdout, read one line of stdin; only y/yes is a yes (no stdin or EOF is a no)."""
    print(question, end="", flush=True)
    try:
        answer = sys.stdin.readline() if sys.stdin is not None else ""
    except (OSError, ValueError):  # stdin closed or unreadable
        answer = ""
    if not answer.endswith("\n"):
        print()  # keep the next line off the question's line
    return answer.strip().lower() in ("y", "yes")


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
