"""``collect_caches(client, into=...)``: bring the answers in every worker's cache home.

Each live worker exports its per-worker cache folders (``local_cache=True``) to Parquet (``CacheView.to_parquet``,
the same format as ``minima-nb cache export``), and the notebook imports them into ``into`` with
the import's own checks, keeping the rows it already has. Workers on one host that share the
notebook's cache need none of this; it is for per-worker caches (``local_cache=True``, or
several hosts). A worker that died took its process's list of caches with it: its rows are
found again only if its folder is on a disk a live worker can read.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from ...export import open_cache, view
from .worker import local_caches


def export_worker_caches(skip: list[str]) -> list[tuple[str, bytes]]:
    """(folder, Parquet bytes) for each per-worker cache folder of this process not in ``skip``."""
    out = []
    for folder, cache in sorted(local_caches().items()):
        if os.path.abspath(folder) in skip:
            continue
        with tempfile.TemporaryDirectory(prefix="minima-collect-") as tmp:
            path = os.path.join(tmp, "cache.parquet")
            cache.flush()  # rows still in the writer's queue belong in the export
            view(cache).to_parquet(path, progress=False)
            with open(path, "rb") as fh:
                out.append((folder, fh.read()))
    return out


def collect_caches(client: Any, into: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """Merge every worker's cache rows into the cache folder ``into``; counts per worker cache.

    Returns ``{"<worker> <folder>": {"rows": n, "inserted": k, ...}}`` (the import's counts).
    """
    target = os.path.abspath(os.fspath(into))
    exported = client.run(export_worker_caches, [target])
    counts: dict[str, dict[str, int]] = {}
    with open_cache(target) as home, tempfile.TemporaryDirectory(prefix="minima-collect-") as tmp:
        for address, parts in exported.items():
            for folder, data in parts:
                path = os.path.join(tmp, "part.parquet")
                with open(path, "wb") as fh:
                    fh.write(data)
                counts[f"{address} {folder}"] = dict(home.from_parquet(path, progress=False))
    return counts
