"""Cache as data (public: ``minima_nb.export``): a prompt cache as a DataFrame or a Parquet file.

``open_cache(dir)`` and ``view(backend)`` give a :class:`CacheView` with ``to_pandas``,
``to_parquet``, ``from_parquet``, ``stats`` and ``delete``. Inside: :mod:`.view` (the view),
:mod:`.schema` (the Parquet schema and an import's checks), :mod:`.pages` (cache pages read
straight into Arrow).
"""

from .schema import PARQUET_SCHEMA, PARQUET_SCHEMA_VERSION, REQUIRED_COLUMNS, check_parquet
from .view import CacheView, open_cache, to_epoch, view

__all__ = ["PARQUET_SCHEMA", "PARQUET_SCHEMA_VERSION", "REQUIRED_COLUMNS", "CacheView", "check_parquet",
           "open_cache", "to_epoch", "view"]
