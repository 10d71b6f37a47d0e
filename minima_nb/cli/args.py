"""What every ``minima-nb`` subcommand shares: the one-line-error parser, argument types, and
the small terminal helpers (fail with one line, confirm, wait for Ctrl-C)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import NoReturn

PROG = "minima-nb"


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are a single line on stderr (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def wait_for_interrupt() -> None:
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


def confirm(question: str) -> bool:
    """Ask on stdout, read one line of stdin; only y/yes is a yes (no stdin or EOF is a no)."""
    print(question, end="", flush=True)
    try:
        answer = sys.stdin.readline() if sys.stdin is not None else ""
    except (OSError, ValueError):  # stdin closed or unreadable
        answer = ""
    if not answer.endswith("\n"):
        print()  # keep the next line off the question's line
    return answer.strip().lower() in ("y", "yes")


def fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
