"""Edges to other systems (DSPy, Dask, provider batch APIs, ...): each in its own leaf sub-package, imported on demand.

An edge may use every part of minima_nb; nothing in minima_nb imports an edge except the public
faces (``minima_nb.dspy_adapter``, ``minima_nb.dask``, ``minima_nb.batch``), the CLI and the
delegating methods (the accessor's, ``backend.batch_mode``), so a missing optional dependency only matters to the user who asked for that edge, and
``import minima_nb`` never loads one.
"""
