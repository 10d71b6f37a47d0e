"""The ``minima-nb`` command line (console script ``minima_nb.cli:main``) and ``make demo``."""

from .main import main

__all__ = ["main"]
