"""Benchmarks against the peers, side by side in one run: ``make bench`` / ``python -m benchmarks.run``.

Not part of the test suite. ``run`` orchestrates; ``upstream`` is the fast loopback server;
``clients``, ``memory``, ``pacing`` and ``cachebench`` are the child processes that measure;
``scenarios_http``/``scenarios_data`` turn their figures into the sections of RESULTS.md.
"""
