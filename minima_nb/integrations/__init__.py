"""Edges: minima_nb meeting other systems (Dask today). Each edge is a leaf sub-package.

Nothing below the notebook layer imports an edge; an edge's public face is a top-level module
(``minima_nb.dask``), and ``import minima_nb`` never loads one.
"""
