"""Scale-out on Dask: ``import minima_nb.dask`` registers ``ddf.minima`` and ``series.minima``.

``ddf.minima.generate("prompt")`` is lazy (a ``dd.Series``; nothing is sent before compute), one
engine per worker process, one global rpm budget, the API key never in the task graph or on
the scheduler. A plain ``.compute()`` (or ``dask.compute``, ``client.compute``, ``.persist()``)
shows one live bar of rows across the cluster in the cell that runs it (a heartbeat line outside
a notebook); ``last_progress()`` returns its final counts. ``compute(...)``/``progress()``
choose the display for one call or block; ``share_key(client)`` hands the key to workers;
``collect_caches(client, into=...)`` brings the workers' caches home. Needs the extra:
``pip install 'minima-nb[dask]'``. The code lives in ``minima_nb.integrations.dask``.
"""

from .integrations.dask import accessor  # noqa: F401  (registers ddf.minima and series.minima)
from .integrations.dask.caches import collect_caches
from .integrations.dask.computation import compute, progress
from .integrations.dask.keys import share_key
from .integrations.dask.live import last_progress
from .integrations.dask.progress import TOPIC

__all__ = ["TOPIC", "collect_caches", "compute", "last_progress", "progress", "share_key"]
