"""Tests for the minima-nb console script (minima_nb.cli), run as real subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from minima_nb._version import __version__
from minima_nb.cli import main

_REPO = Path(__file__).resolve().parents[1]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never use a proxy


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "minima_nb.cli", *args], cwd=_REPO,
                          capture_output=True, text=True, timeout=60)


def test_version_prints_name_and_version():
    """`minima-nb --version` prints 'minima-nb <version>' and exits 0."""
    result = _run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"minima-nb {__version__}"


def test_help_lists_mock_server():
    """`minima-nb --help` exits 0 and lists the mock-server subcommand."""
    result = _run_cli("--help")
    assert result.returncode == 0
    assert "mock-server" in result.stdout


def test_bad_argument_is_one_line_error():
    """A bad option value is one line on stderr, a non-zero exit and no traceback."""
    result = _run_cli("mock-server", "--fault-rate", "2")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--fault-rate" in result.stderr and "Traceback" not in result.stderr


def test_main_without_command_returns_nonzero(capsys):
    """main() with no subcommand prints the help and returns non-zero instead of raising."""
    assert main([]) != 0
    assert "mock-server" in capsys.readouterr().err


def test_port_in_use_is_one_line_error():
    """mock-server on a taken port fails with one clear stderr line, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = _run_cli("mock-server", "--port", str(taken.getsockname()[1]))
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot listen" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.timeout(60)
def test_mock_server_answers_then_stops_on_sigint():
    """mock-server prints its base URL, answers a chat request, and exits 0 on Ctrl-C."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "minima_nb.cli", "mock-server", "--port", "0"],
        cwd=_REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline()  # the server prints exactly one line once listening
        match = re.search(r"OPENAI_BASE_URL=(\S+)", line)
        assert match, line
        payload = {"model": "mock-model",
                   "messages": [{"role": "user", "content": "What is 2+2?"}]}
        request = urllib.request.Request(match.group(1) + "/chat/completions",
                                         data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        with _OPENER.open(request, timeout=10) as response:
            answer = json.loads(response.read())["choices"][0]["message"]["content"]
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert answer == "4"
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
