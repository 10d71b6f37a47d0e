"""One engine per worker process: a lazy singleton, its API key, and closing it when the worker stops.

A worker builds its engine (an :class:`~minima_nb.OpenAIMinimaLlm` on minima_nb's private loop
thread: HTTP pool, pacer, cache connection) the first time a partition needs it, and reuses it
for every later partition and computation with the same settings. The key comes from this
process, never from the graph: first a key handed over in-process (the threaded scheduler and
``processes=False`` clusters run in the notebook's own process), then the worker's environment
variable named by the settings (a deployment secret, the notebook's environment on a
``LocalCluster``, or ``minima_nb.dask.share_key``). :class:`EngineCloser`, a WorkerPlugin, closes
the engines in ``teardown`` when the worker stops, so no aiohttp session is left unclosed.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import threading
from typing import Any

from ...config import MinimaLlmConfig
from ...engine.backend import OpenAIMinimaLlm
from ...engine.sync import run_sync
from .settings import EngineSettings

logger = logging.getLogger(__name__)

LOCAL_CACHE_FOLDER = "minima-cache"
NO_KEY = (
    "no API key on this worker ({where}): the notebook's config has one, and workers read it "
    "from the environment variable {env}. Set {env} in the workers' environment (the "
    "deployment's secrets, `dask worker` started with it, or the notebook's environment before "
    "a LocalCluster starts), or call minima_nb.dask.share_key(client) once"
)

_lock = threading.Lock()
_engines: dict[tuple[Any, ...], OpenAIMinimaLlm] = {}
_process_keys: dict[str, str] = {}  # env var name -> key handed over inside this process


def remember_key(env: str, key: str) -> None:
    """Make ``key`` this process's answer for ``env`` (kept in memory, never in the graph)."""
    with _lock:
        _process_keys[env] = key


def set_environment_key(env: str, key: str, dask_worker: Any = None) -> bool:
    """Put ``key`` into this process's environment as ``env`` (and a Nanny's worker environment).

    Run on workers and nannies by ``share_key``; a Nanny passes its ``env`` to the worker
    processes it (re)starts, so a restarted worker has the key too. Never raises: a failing
    ``client.run`` function would have its arguments written to the worker's log.
    """
    try:
        os.environ[env] = key
        nanny_env = getattr(dask_worker, "env", None)
        if isinstance(nanny_env, dict):
            nanny_env[env] = key
        return True
    except Exception:
        return False


def find_key(env: str) -> str | None:
    """This process's key for ``env``: one handed over in-process, else the environment's."""
    with _lock:
        key = _process_keys.get(env)
    return key or os.environ.get(env) or None


def cache_dir_for(settings: EngineSettings, local_directory: str | None) -> str | None:
    """The cache folder this worker uses: the notebook's, or one under the worker's own directory."""
    if settings.local_cache and local_directory:
        return os.path.join(local_directory, LOCAL_CACHE_FOLDER)
    return settings.get("cache_dir")


def engine_for(settings: EngineSettings, *, budget_id: str | None,
               local_directory: str | None, where: str) -> OpenAIMinimaLlm | str:
    """This process's engine for ``settings`` (built on first use), or why there is none.

    The message names the worker (``where``) and how to give it a key. Engines are keyed by
    their settings, their budget and their key (a key shared later builds a new engine).
    """
    key = None
    if settings.key_env is not None:
        key = find_key(settings.key_env)
        if key is None:
            return NO_KEY.format(where=where, env=settings.key_env)
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16] if key else None
    cache_dir = cache_dir_for(settings, local_directory)
    ident = (settings, budget_id, fingerprint, cache_dir)
    with _lock:
        engine = _engines.get(ident)
        if engine is None:
            # Under a global budget the pacer takes its permits from the budget, so the local
            # rate is off; without one (the threaded scheduler) it paces at the configured rpm.
            rpm = 0 if budget_id is not None else int(settings.get("rpm"))
            config: MinimaLlmConfig = settings.config(api_key=key, cache_dir=cache_dir, rpm=rpm)
            engine = _engines[ident] = OpenAIMinimaLlm(config)
        return engine


def local_caches() -> dict[str, Any]:
    """The prompt cache of each per-worker (``local_cache``) folder of this process's engines."""
    with _lock:
        engines = [e for ident, e in _engines.items() if ident[0].local_cache]
    return {e.config.cache_dir: e.cache for e in engines if e.config.cache_dir and e.cache is not None}


def close_engines() -> int:
    """Close every engine of this process (HTTP pools, then caches); return how many."""
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        try:
            run_sync(engine.aclose())  # the HTTP pool on its loop, and the cache committed
        except Exception:
            # At interpreter exit (no teardown ran) no new thread can start for the commit;
            # close() below still commits the cache. A stopping worker must stop: go on.
            logger.debug("minima_nb: closing a worker engine failed", exc_info=True)
        finally:
            engine.close()
    return len(engines)


def _plugin_base() -> type:
    from distributed.diagnostics.plugin import WorkerPlugin

    return WorkerPlugin


class EngineCloser(_plugin_base()):  # type: ignore[misc]
    """A WorkerPlugin whose ``teardown`` closes the worker's engines when the worker stops."""

    name = "minima-nb-engines"
    idempotent = True

    def teardown(self, worker: Any) -> None:
        """Close this process's engines (the worker is stopping)."""
        close_engines()


# A worker that is killed or exits without its plugins' teardown still closes what it can.
atexit.register(close_engines)
