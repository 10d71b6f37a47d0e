"""The provider's files and batches endpoints over aiohttp: upload, create, retrieve, list, cancel, download.

Stateless: :mod:`.job` records every step in the state file before calling here. The API key
travels only in the ``Authorization`` header of requests to ``base_url``'s host; no message,
log line or exception made here contains it. Reads (retrieve, list, download) are retried on
429/5xx/timeouts, honouring ``Retry-After``; ``create`` is never retried: a timeout, a dropped
connection or a 5xx there is :class:`AmbiguousCreate`, because the batch may exist (billed) and
the job must look for it by its submission id before creating another. Downloads stream to a
file and follow a redirect (to a presigned URL) without the ``Authorization`` header.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from ...errors import (
    AuthError,
    ClientError,
    ConnectError,
    MinimaError,
    RateLimited,
    RequestTimeout,
    ServerError,
)

__all__ = ["AmbiguousCreate", "BatchClient", "BatchLost", "RUNNING", "TERMINAL", "api_url",
           "normalise_batch"]

_log = logging.getLogger(__name__)
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
RUNNING = frozenset({"validating", "in_progress", "finalizing", "cancelling", "pre_schedule", "queued"})
_READ_ATTEMPTS = 5
_MAX_WAIT_S = 60.0
_warned: set[str] = set()


class AmbiguousCreate(MinimaError):
    """``POST /batches`` failed in a way that does not say whether the batch was created."""


class BatchLost(ClientError):
    """The provider answers 404 for a batch: purged, or created under another key or project."""


def api_url(base_url: str, path: str) -> str:
    """``base_url`` joined with an API path such as ``files``: ``/v1`` is added only when missing.

    ``https://api.openai.com/v1`` and ``https://api.openai.com`` both give ``.../v1/files``;
    ``https://api.groq.com/openai/v1`` gives ``.../openai/v1/files``.
    """
    base = base_url.rstrip("/")
    if not urlsplit(base).path.rstrip("/").endswith("/v1"):
        base += "/v1"
    return f"{base}/{path.lstrip('/')}"


def _none_if_empty(value: Any) -> Any:
    return None if value == "" else value


def normalise_batch(data: Any) -> dict[str, Any]:
    """A Batch object in OpenAI's shape: wrappers (``{"job": ...}``) removed, status lower-case,
    empty file ids as None; an unknown status is kept but warned about once (treated as running)."""
    if isinstance(data, dict) and isinstance(data.get("job"), dict) and "status" not in data:
        data = data["job"]
    if not isinstance(data, dict):
        raise MinimaError(f"the provider answered a batch call with {type(data).__name__}, not an object")
    batch = dict(data)
    status = str(batch.get("status") or "").lower().removeprefix("job_state_")
    batch["status"] = {"running": "in_progress", "pending": "validating"}.get(status, status)
    if batch["status"] not in TERMINAL | RUNNING and batch["status"] not in _warned:
        _warned.add(batch["status"])
        _log.warning("batch status %r is unknown to minima_nb; treating it as still running", status)
    for name in ("output_file_id", "error_file_id"):
        batch[name] = _none_if_empty(batch.get(name))
    if not isinstance(batch.get("request_counts"), dict):
        batch["request_counts"] = {}
    return batch


def _message(data: Any, fallback: str) -> str:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message") or fallback)[:300]
    return fallback


class BatchClient:
    """The files and batches calls of one provider (``base_url`` as for chat, with or without ``/v1``)."""

    def __init__(self, base_url: str, api_key: str | None, *, timeout_s: float = 60.0,
                 purpose: str = "batch") -> None:
        self.base_url = base_url
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._purpose = purpose
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never the key
        return f"BatchClient(base_url={self.base_url!r})"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                total=None, connect=self._timeout_s, sock_read=self._timeout_s))
        return self._session

    async def aclose(self) -> None:
        """Close the HTTP session (the client can be used again)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, dict[str, str]]:
        """One request: (status, JSON body or None, headers). Raises ConnectError/RequestTimeout."""
        url = api_url(self.base_url, path)
        try:
            async with self._get_session().request(method, url, headers=self._headers(),
                                                   allow_redirects=False, **kwargs) as response:
                raw = await response.read()
                try:
                    data = await response.json(content_type=None) if raw else None
                except ValueError:
                    data = None
                return response.status, data, dict(response.headers)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"{method} {path}: no answer within {self._timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise ConnectError(f"{method} {path}: {type(exc).__name__}: {str(exc)[:200]}") from None

    def _raise_for(self, method: str, path: str, status: int, data: Any, headers: dict[str, str]) -> None:
        what = f"{method} {path} answered {status}: {_message(data, 'no error message')}"
        if status == 429:
            retry_after = _retry_after(headers)
            raise RateLimited(what, retry_after=retry_after)
        if status in (401, 403):
            raise AuthError(what + ". Check the API key (OPENAI_API_KEY) and its project.", status=status)
        if status == 404:
            raise BatchLost(what, status=404)
        if status >= 500 or status in (408, 409):
            raise ServerError(what, status=status)
        raise ClientError(what, status=status)

    async def _read(self, method: str, path: str, **kwargs: Any) -> Any:
        """A call that may be repeated: retried on 429, 5xx and transport errors."""
        delay = 0.5
        for attempt in range(_READ_ATTEMPTS):
            try:
                status, data, headers = await self._send(method, path, **kwargs)
                if status < 300:
                    return data
                self._raise_for(method, path, status, data, headers)
            except (RateLimited, ServerError, ConnectError, RequestTimeout) as exc:
                if attempt == _READ_ATTEMPTS - 1:
                    raise
                wait = getattr(exc, "retry_after", None) or delay
                await asyncio.sleep(min(wait, _MAX_WAIT_S))
                delay *= 2
        raise AssertionError("unreachable")

    async def upload(self, path: str | os.PathLike[str], filename: str) -> dict[str, Any]:
        """``POST /files`` (multipart, streamed from ``path``); the File object.

        Repeating an upload is harmless (an unused file costs nothing), so it is retried.
        """
        async def attempt() -> Any:
            with open(path, "rb") as handle:
                form = aiohttp.FormData()
                form.add_field("purpose", self._purpose)
                form.add_field("file", handle, filename=filename, content_type="application/jsonl")
                status, data, headers = await self._send("POST", "files", data=form)
            if status >= 300:
                self._raise_for("POST", "files", status, data, headers)
            return data

        for round_ in range(3):
            try:
                data = await attempt()
                break
            except (ServerError, ConnectError, RequestTimeout, RateLimited):
                if round_ == 2:
                    raise
                await asyncio.sleep(0.5 * 2**round_)
        if isinstance(data, dict) and isinstance(data.get("file"), dict):
            data = data["file"]
        if not isinstance(data, dict) or not data.get("id"):
            raise MinimaError("the provider accepted the upload but answered no file id")
        return data

    async def create(self, input_file_id: str, *, endpoint: str, completion_window: str,
                     metadata: dict[str, str]) -> dict[str, Any]:
        """``POST /batches``, sent once. AmbiguousCreate when the outcome is unknown."""
        body = {"input_file_id": input_file_id, "endpoint": endpoint,
                "completion_window": completion_window, "metadata": metadata}
        try:
            status, data, headers = await self._send("POST", "batches", json=body)
        except (ConnectError, RequestTimeout) as exc:
            raise AmbiguousCreate(f"creating the batch may or may not have worked: {exc}") from None
        if status >= 500:
            raise AmbiguousCreate(f"creating the batch may or may not have worked: the provider answered {status}")
        if status >= 300:
            self._raise_for("POST", "batches", status, data, headers)
        return normalise_batch(data)

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        """``GET /batches/{id}``, normalised. BatchLost on 404."""
        return normalise_batch(await self._read("GET", f"batches/{batch_id}"))

    async def list_page(self, after: str | None = None, limit: int = 100) -> dict[str, Any]:
        """One page of ``GET /batches`` (``after`` = the last id of the previous page)."""
        params = {"limit": str(limit), **({"after": after} if after else {})}
        data = await self._read("GET", "batches", params=params)
        if not isinstance(data, dict):
            raise MinimaError("the provider's batch list is not an object")
        data["data"] = [normalise_batch(b) for b in data.get("data") or []]
        return data

    async def list_all(self, *, max_pages: int = 50) -> list[dict[str, Any]]:
        """Every batch of the account, page by page (bounded to ``max_pages`` pages of 100)."""
        found: list[dict[str, Any]] = []
        after = None
        for _ in range(max_pages):
            page = await self.list_page(after)
            found += page["data"]
            if not page.get("has_more") or not page["data"]:
                break
            after = page.get("last_id") or page["data"][-1].get("id")
        return found

    async def cancel(self, batch_id: str) -> dict[str, Any] | None:
        """``POST /batches/{id}/cancel``; None when the provider refuses (already finished)."""
        status, data, headers = await self._send("POST", f"batches/{batch_id}/cancel")
        if status < 300:
            return normalise_batch(data)
        if status in (400, 409):
            return None  # e.g. "Cannot cancel a batch with status 'completed'": re-retrieve it
        self._raise_for("POST", f"batches/{batch_id}/cancel", status, data, headers)
        return None

    async def download(self, file_id: str, destination: str | os.PathLike[str]) -> int:
        """``GET /files/{id}/content`` streamed into ``destination``; the bytes written.

        A 30x is followed once per hop (at most 5), *without* the Authorization header when it
        leads to another URL than the API's (a presigned storage URL must never see the key).
        """
        url = api_url(self.base_url, f"files/{file_id}/content")
        api = urlsplit(url)
        headers = {**self._headers(), "Accept": "application/binary"}
        for attempt in range(_READ_ATTEMPTS):
            try:
                return await self._download(url, api, headers, Path(destination))
            except (ServerError, ConnectError, RequestTimeout, RateLimited) as exc:
                if attempt == _READ_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(min(getattr(exc, "retry_after", None) or 0.5 * 2**attempt, _MAX_WAIT_S))
        raise AssertionError("unreachable")

    async def _download(self, url: str, api: Any, headers: dict[str, str], destination: Path) -> int:
        session = self._get_session()
        for _hop in range(6):
            try:
                async with session.get(url, headers=headers, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                        url = urljoin(url, response.headers["Location"])
                        target = urlsplit(url)
                        if (target.scheme, target.netloc, target.path) != (api.scheme, api.netloc, api.path):
                            headers = {"Accept": "application/binary"}  # the key stays with the API
                        continue
                    if response.status >= 300:
                        raw = await response.read()
                        try:
                            data = json.loads(raw)
                        except ValueError:
                            data = None
                        self._raise_for("GET", "files/<id>/content", response.status, data, dict(response.headers))
                    written = 0
                    with open(destination, "wb") as out:
                        async for block in response.content.iter_chunked(1 << 20):
                            out.write(block)
                            written += len(block)
                    return written
            except asyncio.TimeoutError:
                raise RequestTimeout(f"downloading a batch file: no answer within {self._timeout_s:g} s") from None
            except aiohttp.ClientError as exc:
                raise ConnectError(f"downloading a batch file: {type(exc).__name__}") from None
        raise ClientError("downloading a batch file: too many redirects")


def _retry_after(headers: dict[str, str]) -> float | None:
    value = {k.lower(): v for k, v in headers.items()}.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
