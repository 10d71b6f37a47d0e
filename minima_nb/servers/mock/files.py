"""The mock server's ``/v1/files``: multipart upload, retrieve, content, and presigned downloads.

Files live in memory. A download can be scripted to redirect (``redirect_downloads``) to a
one-time ``/presigned/<token>`` URL on the same server which, like a cloud bucket's presigned
URL, refuses any request that still carries an ``Authorization`` header: a client that
forwards the API key on a redirect fails loudly here instead of leaking it elsewhere.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import BodyPartReader, web

from .replies import json_response

__all__ = ["FileStore", "MockFile", "not_found", "unauthorized"]


@dataclass
class MockFile:
    """One stored file."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def describe(self) -> dict:
        """The OpenAI File object."""
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": self.created_at + 30 * 86400}


def not_found(what: str) -> web.Response:
    error = {"message": f"No such {what}", "type": "invalid_request_error", "code": "not_found"}
    return json_response(404, {"error": error}, {})


class FileStore:
    """In-memory files, shared with the batch store (which reads inputs and writes outputs)."""

    def __init__(self, authorized: Callable[[web.Request], bool]) -> None:
        self._authorized = authorized
        self._lock = threading.Lock()
        self._files: dict[str, MockFile] = {}
        self._presigned: dict[str, str] = {}
        self._count = 0
        self.redirect_downloads = 0  # how many of the next downloads answer with a redirect
        self.uploads = 0
        self.downloads = 0

    def add(self, data: bytes, filename: str, purpose: str) -> MockFile:
        """Store ``data`` under a new id."""
        with self._lock:
            self._count += 1
            stored = MockFile(f"file-mock-{self._count}", filename, purpose, data, int(time.time()))
            self._files[stored.id] = stored
        return stored

    def get(self, file_id: str) -> MockFile | None:
        """The file with this id, or None."""
        with self._lock:
            return self._files.get(file_id)

    def routes(self, app: web.Application, prefix: str) -> None:
        """Add the endpoints under ``prefix`` ("/v1" or "")."""
        app.router.add_post(f"{prefix}/files", self._upload)
        app.router.add_get(f"{prefix}/files/{{file_id}}", self._retrieve)
        app.router.add_get(f"{prefix}/files/{{file_id}}/content", self._content)
        if prefix == "":
            app.router.add_get("/presigned/{token}", self._presigned_download)

    async def _upload(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return unauthorized()
        purpose, filename, data = "", "upload.jsonl", b""
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.read()).decode()
            elif part.name == "file":
                filename = part.filename or filename
                data = bytes(await part.read())
        if not data:
            error = {"message": "the 'file' part is missing or empty", "type": "invalid_request_error"}
            return json_response(400, {"error": error}, {})
        stored = self.add(data, filename, purpose or "batch")
        with self._lock:
            self.uploads += 1
        return json_response(200, stored.describe(), {})

    async def _retrieve(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return unauthorized()
        stored = self.get(request.match_info["file_id"])
        return json_response(200, stored.describe(), {}) if stored else not_found("file")

    async def _content(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return unauthorized()
        file_id = request.match_info["file_id"]
        stored = self.get(file_id)
        if stored is None:
            return not_found("file")
        with self._lock:
            redirect = self.redirect_downloads > 0
            if redirect:
                self.redirect_downloads -= 1
                token = secrets.token_urlsafe(12)
                self._presigned[token] = file_id
            self.downloads += 1
        if redirect:
            host = request.headers.get("Host", request.host)
            return web.Response(status=307, headers={"Location": f"http://{host}/presigned/{token}"})
        return web.Response(body=stored.data, content_type="application/octet-stream")

    async def _presigned_download(self, request: web.Request) -> web.Response:
        if "Authorization" in request.headers:
            error = {"message": "a presigned URL must not be sent an Authorization header",
                     "type": "invalid_request_error"}
            return json_response(400, {"error": error}, {})
        with self._lock:
            file_id = self._presigned.pop(request.match_info["token"], None)
        stored = self.get(file_id) if file_id else None
        if stored is None:
            return not_found("presigned URL")
        return web.Response(body=stored.data, content_type="application/octet-stream")


def unauthorized() -> web.Response:
    error = {"message": "Incorrect API key provided", "type": "invalid_request_error",
             "code": "invalid_api_key"}
    return json_response(401, {"error": error}, {})
