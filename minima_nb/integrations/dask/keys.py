"""``share_key(client)``: hand the API key to every worker once, without the scheduler keeping it.

The key goes straight from the notebook to each worker and to each worker's Nanny over the
cluster's own connections (the client's RPC pool, never a scheduler message, plugin or task),
and is kept in those processes' environment under the variable the graph names
(``OPENAI_API_KEY`` by default). A Nanny passes its environment to the worker process it
restarts, so a worker that died and came back still has the key. Workers that join later do
not: call ``share_key`` again after scaling up.
"""

from __future__ import annotations

import pickle
from typing import Any

from ...errors import ConfigError
from ...notebook import session
from .settings import DEFAULT_KEY_ENV
from .worker import set_environment_key

WHERE_KEPT = (
    "the key is kept in each worker's (and its Nanny's) environment as {env}; "
    "it was sent to {n} process(es) directly, never through the scheduler"
)


async def _run_on(client: Any, address: str, env: str, key: str) -> bool:
    # The same message Client.run sends, but to the process itself instead of through the
    # scheduler's broadcast (which would see the key in transit).
    reply = await client.rpc(address).run(
        function=pickle.dumps(set_environment_key), args=pickle.dumps((env, key)), wait=True)
    return reply.get("status") == "OK" and bool(reply.get("result"))


def share_key(client: Any, key: str | None = None, *, env: str = DEFAULT_KEY_ENV) -> str:
    """Give every current worker the API key (default: the configured backend's); say where it is kept."""
    key = key if key is not None else session.get_backend().config.api_key
    if not key:
        raise ConfigError("share_key: there is no key to share; pass key=... or configure one "
                          "(minima_nb.configure(api_key=...) or OPENAI_API_KEY).")
    workers = client.scheduler_info().get("workers", {})
    addresses = list(workers) + [w["nanny"] for w in workers.values() if w.get("nanny")]

    async def send_all() -> list[bool]:
        return [await _run_on(client, address, env, key) for address in addresses]

    done = client.sync(send_all)
    if not all(done):
        failed = [a for a, ok in zip(addresses, done, strict=True) if not ok]
        raise ConfigError(f"share_key: could not set {env} on {failed}")
    return WHERE_KEPT.format(env=env, n=len(addresses))
