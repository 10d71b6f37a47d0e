# Two entry points for a fresh machine with only Python and make:
#   make demo   - a real run against the embedded mock server (no API key)
#   make test   - the whole test suite
#   make bench  - the benchmarks against the peers (benchmarks/RESULTS.md)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# `make bench` installs the peers too (extra "bench"), under its own stamp: `make test` ignores it.
BENCH_STAMP := $(VENV)/.bench-installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: $(STAMP)
	$(PY) -m minima_nb.cli.demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

$(BENCH_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	rm -f $(VENV)/.bench-installed-* && touch $(BENCH_STAMP)

# The peers side by side on a loopback upstream; writes benchmarks/RESULTS.md (~10-15 min).
bench: $(BENCH_STAMP)
	command -v wrk || (apt-get update -qq && apt-get install -y -qq wrk) || echo "wrk unavailable; server capacity shown by CPU instead"
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
