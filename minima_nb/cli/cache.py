"""``minima-nb cache stats|export|import|clear``: a prompt cache from the command line.

pandas and pyarrow load only in the subcommands that need them, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import Any

from ..config import setting_from_env
from .args import OneLineErrorParser, confirm, fail


def _when(text: str) -> float:
    from ..export import to_epoch

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


def add_cache_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cache", help="inspect, export, import or clear a prompt cache",
        description="Work with a prompt cache directory (the backend's cache_dir): print its "
                    "stats, export it to Parquet, import a Parquet export, delete rows.")
    parser.set_defaults(handler=_cmd_cache, cache_parser=parser)
    actions = parser.add_subparsers(dest="cache_command", metavar="ACTION",
                                    parser_class=OneLineErrorParser)
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
        from ..errors import CacheError

        try:
            return handler(args)
        except (CacheError, OSError, ValueError) as exc:
            fail(f"cache {args.cache_command}: {' '.join(str(exc).split())}")
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
    from ..export import open_cache

    directory = args.dir or setting_from_env("cache_dir")
    if not directory:
        fail("cache stats: pass the cache directory (DIR) or set CACHE_DIR")
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
    from ..export import open_cache

    with open_cache(args.dir, create=False) as view:
        summary = view.to_parquet(args.out, include_raw=not args.no_raw, **_filters(args))
    print(f"exported {summary['rows']:,} rows ({_size(summary['bytes'])}) to {summary['path']}")
    return 0


@_reports_cache_errors
def _cmd_cache_import(args: argparse.Namespace) -> int:
    from ..export import check_parquet, open_cache

    check_parquet(args.source)  # before open_cache, which would create an empty cache in DIR
    with open_cache(args.dir) as view:
        counts = view.from_parquet(args.source, on_conflict="replace" if args.replace else "keep")
    invalid = f" ({counts['invalid']:,} without key or text)" if counts["invalid"] else ""
    print(f"imported {args.source} into {args.dir}: {counts['inserted']:,} inserted, "
          f"{counts['replaced']:,} replaced, {counts['skipped']:,} skipped{invalid}")
    return 0


@_reports_cache_errors
def _cmd_cache_clear(args: argparse.Namespace) -> int:
    from ..export import open_cache

    with open_cache(args.dir, create=False) as view:
        matching = view.count(**_filters(args))
        if matching == 0:
            print(f"nothing to delete in {args.dir}")
            return 0
        if not args.yes and not confirm(f"Delete {matching:,} rows from {args.dir}? [y/N] "):
            fail("cache clear: not confirmed, nothing deleted (pass --yes to skip the question)")
            return 1
        deleted = view.delete(**_filters(args))
    print(f"deleted {deleted:,} rows from {args.dir}")
    return 0
