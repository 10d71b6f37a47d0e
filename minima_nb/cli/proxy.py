"""``minima-nb proxy`` (also the ``minimallm-proxy`` script): the caching proxy in the foreground.

It prints where it listens and how to point clients at it, then a heartbeat line of its counters
every ``batch.heartbeat_s`` seconds while requests come in; Ctrl-C (or SIGTERM) stops it
gracefully (answers in progress finish, the cache is committed) and prints one closing line.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from .args import fail, port


def add_proxy_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "proxy",
        help="run the caching proxy: every OpenAI client shares one cache and one rate budget",
        description="Serve an OpenAI-compatible chat API in front of the configured upstream "
                    "(OPENAI_BASE_URL, OPENAI_MODEL, OPENAI_API_KEY, CACHE_DIR... or --config), "
                    "with minima_nb's prompt cache, pacing and retries, until Ctrl-C. Set "
                    "MINIMA_PROXY_TOKEN to require 'Authorization: Bearer <token>' from clients.",
    )
    add_proxy_arguments(parser)


def add_proxy_arguments(parser: argparse.ArgumentParser) -> None:
    """The proxy's options (shared by ``minima-nb proxy`` and ``minimallm-proxy``)."""
    parser.add_argument("--config", default=None, help="YAML file of settings (default: the environment)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=port, default=8990,
                        help="port to listen on, 0 for any free port (default: %(default)s)")
    parser.add_argument("--force-model", action="store_true",
                        help="answer every request with the configured model, whatever the client names")
    parser.add_argument("--event-loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="the loop to serve on; auto: uvloop when installed (default: %(default)s)")
    parser.set_defaults(handler=run_proxy)


def run_proxy(args: argparse.Namespace) -> int:
    """Serve until interrupted; returns the exit code."""
    from ..config import MinimaLlmConfig
    from ..errors import ConfigError
    from ..proxy import ProxyServer
    from ..servers.proxy.server import tune_gc_for_serving

    try:
        config = MinimaLlmConfig.from_yaml(args.config) if args.config else MinimaLlmConfig.from_env()
        proxy = ProxyServer(config, host=args.host, port=args.port, force_model=args.force_model,
                            event_loop=args.event_loop)
        proxy.start()
    except ConfigError as exc:
        fail(f"proxy: {exc}")
        return 2
    except OSError as exc:
        fail(f"proxy: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return 1
    tune_gc_for_serving()  # this process is the proxy's alone
    print(f"minima-nb proxy listening on {proxy.base_url} -> {config.base_url} "
          f"(model {config.model}, cache {config.cache_dir or 'off'}); point clients at it with: "
          f"export OPENAI_BASE_URL={proxy.base_url}  (Ctrl-C stops it)", flush=True)
    stop = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if in_main else None
    interrupted = False
    try:
        last = None
        while not stop.wait(config.batch.heartbeat_s):
            line = proxy.metrics.line()
            if line != last and proxy.metrics.requests:  # quiet while nothing happens
                print(line, flush=True)
                last = line
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        try:
            proxy.stop()
        except KeyboardInterrupt:  # a second Ctrl-C: leave now
            pass
    reason = "interrupted" if interrupted else "stopped"
    print(f"proxy {reason}; cache committed. {proxy.metrics.line().removeprefix('proxy: ')}",
          file=sys.stderr if interrupted else sys.stdout, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``minimallm-proxy`` console script: ``minima-nb proxy`` under minima-llm's name."""
    from .args import OneLineErrorParser

    parser = OneLineErrorParser(prog="minimallm-proxy", description="The minima-nb caching proxy.")
    add_proxy_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return run_proxy(args)
