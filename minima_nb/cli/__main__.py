"""``python -m minima_nb.cli``: the same as the ``minima-nb`` console script."""

from .main import main

raise SystemExit(main())
