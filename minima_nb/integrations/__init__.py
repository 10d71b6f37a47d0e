"""Edges to other systems (DSPy, ...): each in its own sub-package, imported only on demand.

An edge may use every part of minima_nb; nothing in minima_nb imports an edge except the public
faces (``minima_nb.dspy_adapter``), the CLI and the accessor's delegating methods, so a missing
optional dependency only matters to the user who asked for that edge.
"""
