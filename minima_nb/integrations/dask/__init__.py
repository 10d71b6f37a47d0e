"""The Dask edge: ``ddf.minima.generate(...)`` over a cluster (public face: ``minima_nb.dask``).

Modules: :mod:`.accessor` (the accessors, the lazy ``map_partitions`` with its meta),
:mod:`.partition` (the function each partition runs), :mod:`.settings` (what the graph carries:
no key), :mod:`.worker` (the per-process engine and its key), :mod:`.budget` (the global rate
budget), :mod:`.progress` (row counts as events, summed), :mod:`.live` (the bar of a plain
``.compute()``: which cell, when it closes), :mod:`.caches` (bringing workers'
caches home), :mod:`.keys` (``share_key``). Dask is an extra: ``pip install 'minima-nb[dask]'``.
"""

try:
    import dask.dataframe  # noqa: F401
    import distributed  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in an environment without dask
    raise ImportError(
        f"minima_nb.dask needs Dask ({exc.name} is missing): pip install 'minima-nb[dask]'"
    ) from exc
