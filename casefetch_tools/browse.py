"""``casefetch archive serve``: a read-only web page over the archive, local or S3.

The list and the search come from the catalog (worker.catalog), never from every manifest;
a case's page is rendered from its manifest and payload by the same function that writes its
index.html (worker.page), and its files are served from the storage.

What the archive holds is evidence, not trusted content, so every response carries
``X-Content-Type-Options: nosniff`` and a Content-Security-Policy that allows no script; a
file is served inline only when its stored type is one a browser shows without running
anything (pictures, videos, PDF, JSON), anything else (SVG, HTML, unknown) as an attachment.
Only files a manifest lists (and the case's JSON) are served: a path outside the archive can
never be named. Any method but GET and HEAD answers 405. Bound to anything but loopback, the
server requires Basic credentials (ARCHIVE_SERVE_USERS) and refuses to start without them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from aiohttp import web

from casefetch import config
from casefetch.errors import ConfigError
from casefetch_tools.browse_pages import NAV, STATUSES, render_list, render_quarantine
from receiver.auth import AuthError, Credentials, authenticate_headers
from receiver.settings import refuse_placeholders
from worker import archive
from worker.catalog import Catalog, Query
from worker.errors import NotFound
from worker.inspection import read_manifest, read_payload
from worker.manifest import FileStatus
from worker.page import render_case
from worker.quarantine import list_records
from worker.storage import LocalStorage, Storage

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PAGE_SIZE = 50
CHUNK = 1024 * 1024
#: No script anywhere; pictures, videos and the PDF from this server only.
PAGE_POLICY = (
    "default-src 'none'; img-src 'self'; media-src 'self'; object-src 'self'; "
    "frame-src 'self'; style-src 'unsafe-inline'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'self'"
)
#: For the archive's files: the same, and a sandbox (no script, no form, a unique origin)
#: for all but the PDF, which Chromium's viewer refuses to show in a sandbox.
FILE_POLICY = (
    "default-src 'none'; img-src 'self'; media-src 'self'; "
    "style-src 'unsafe-inline'; frame-ancestors 'self'"
)
#: Stored types shown inline; any other is sent as an attachment, never rendered.
INLINE_TYPES = frozenset(
    {
        "application/pdf",
        "application/json",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/bmp",
        "image/heic",
        "image/heif",
        "image/tiff",
        "video/mp4",
        "video/quicktime",
    }
)
#: What a case folder may be called (a safe name, or an encoded one).
_FOLDER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,200}")
_HISTORY = re.compile(rf"{archive.HISTORY}/[A-Za-z0-9_][A-Za-z0-9._-]{{0,200}}\.json")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class BrowseSettings:
    """``ARCHIVE_SERVE_USERS``: comma-separated ``user:password`` pairs (or ``_FILE``)."""

    users: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_env(cls, env: config.Env | None = None) -> BrowseSettings:
        env = config.environ() if env is None else env
        users = config.read_pairs(env, "ARCHIVE_SERVE_USERS", config.split_basic_user)
        refuse_placeholders("ARCHIVE_SERVE_USERS", ("username", "password"), users)
        return cls(users=users)

    def check_host(self, host: str) -> None:
        """Refuse to serve beyond this machine without credentials."""
        if not self.users and not is_loopback(host):
            raise ConfigError(
                "ARCHIVE_SERVE_USERS",
                f"required to serve on {host} (anything but loopback); give user:password pairs",
            )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(storage: Storage, catalog: Catalog, settings: BrowseSettings) -> web.Application:
    credentials = Credentials.build(basic_users=settings.users)
    app = web.Application(middlewares=[_guard(credentials)])
    app.on_response_prepare.append(_security_headers)
    browser = _Browser(storage, catalog)
    app.router.add_get("/", browser.cases)
    app.router.add_get("/quarantine", browser.quarantine)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/cases/{name}", browser.case_redirect)
    app.router.add_get("/cases/{name}/", browser.case)
    app.router.add_get("/cases/{name}/{path:.+}", browser.file)
    return app


def _guard(credentials: Credentials) -> Any:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in {"GET", "HEAD"}:
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        if credentials.basic_users and request.path != "/healthz":
            try:
                authenticate_headers(request.headers.get("Authorization"), None, credentials)
            except AuthError as exc:
                raise web.HTTPUnauthorized(
                    headers={"WWW-Authenticate": 'Basic realm="casefetch archive", charset="UTF-8"'}
                ) from exc
        return await handler(request)

    return guard


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Content-Security-Policy", PAGE_POLICY)
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers.setdefault("Cache-Control", "no-cache")


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def _html(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/html", charset="utf-8")


class _Browser:
    def __init__(self, storage: Storage, catalog: Catalog) -> None:
        self.storage = storage
        self.catalog = catalog

    async def cases(self, request: web.Request) -> web.Response:
        form = {
            name: request.query.get(name, "").strip()
            for name in ("q", "status", "since", "until", "page")
        }
        query = _query(form)
        rows, total = await asyncio.to_thread(self.catalog.search, query)
        return _html(render_list(rows, total, query, form))

    async def quarantine(self, request: web.Request) -> web.Response:
        records = await asyncio.to_thread(list_records, self.storage)
        return _html(render_quarantine(records))

    async def case_redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/cases/{_folder(request).rsplit('/', 1)[-1]}/")

    async def case(self, request: web.Request) -> web.Response:
        folder = _folder(request)
        manifest, payload = await asyncio.to_thread(self._read_case, folder)
        return _html(render_case(manifest, payload, nav=NAV))

    def _read_case(self, folder: str) -> tuple[dict[str, Any], Any]:
        try:
            manifest = read_manifest(self.storage, folder)
        except (NotFound, ValueError) as exc:
            raise web.HTTPNotFound(text="no such case\n") from exc
        return manifest, read_payload(self.storage, folder)

    async def file(self, request: web.Request) -> web.StreamResponse:
        folder = _folder(request)
        path = request.match_info["path"]
        if path == archive.INDEX_HTML:  # the stored page is this server's case page
            raise web.HTTPFound("./")
        manifest, _payload = await asyncio.to_thread(self._read_case, folder)
        content_type, size = _servable(manifest, path)
        key = archive.case_key(folder, path)
        headers = {
            "Content-Type": content_type,
            "Content-Security-Policy": FILE_POLICY
            + ("" if content_type == "application/pdf" else "; sandbox"),
        }
        if content_type not in INLINE_TYPES:
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Disposition"] = f'attachment; filename="{path.rsplit("/", 1)[-1]}"'
        if isinstance(self.storage, LocalStorage):
            local = self.storage.path(key)
            if not local.is_file():
                raise web.HTTPNotFound(text="no such file\n")
            return web.FileResponse(local, headers=headers)
        return await self._stream(request, key, headers, size)

    async def _stream(
        self, request: web.Request, key: str, headers: dict[str, str], size: int | None
    ) -> web.StreamResponse:
        opening = self.storage.open_reader(key)
        try:
            reader = await asyncio.to_thread(opening.__enter__)
        except NotFound as exc:
            raise web.HTTPNotFound(text="no such file\n") from exc
        try:
            response = web.StreamResponse(headers=headers)
            if size is not None:
                response.content_length = size
            await response.prepare(request)
            if request.method != "HEAD":
                while chunk := await asyncio.to_thread(reader.read, CHUNK):
                    await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            await asyncio.to_thread(opening.__exit__, None, None, None)


def _folder(request: web.Request) -> str:
    name = request.match_info["name"]
    if not _FOLDER.fullmatch(name):
        raise web.HTTPNotFound(text="no such case\n")
    return f"{archive.CASES}/{name}"


def _servable(manifest: dict[str, Any], path: str) -> tuple[str, int | None]:
    """The stored type and size of a file the case may serve; 404 for any other path."""
    if path in {archive.CASE_JSON, archive.MANIFEST} or _HISTORY.fullmatch(path):
        return "application/json", None
    for entry in manifest.get("files") or []:
        if entry.get("path") == path and entry.get("status") == FileStatus.STORED:
            return str(entry.get("contentType") or "application/octet-stream"), (
                entry.get("bytes") if isinstance(entry.get("bytes"), int) else None
            )
    raise web.HTTPNotFound(text="no such file\n")


def _query(form: dict[str, str]) -> Query:
    """The catalog query a list request asks for; 400 on a value that makes no sense."""
    status = form["status"] or None
    if status is not None and status not in STATUSES:
        raise web.HTTPBadRequest(text=f"status: one of {', '.join(STATUSES)}\n")
    since, until = _day(form["since"], "since"), _day(form["until"], "until")
    try:
        page = int(form["page"] or 1)
    except ValueError:
        page = 0
    if not 1 <= page <= 1_000_000:
        raise web.HTTPBadRequest(text="page: a whole number from 1\n")
    return Query(
        status=status,
        since=since.isoformat() if since else None,
        before=(until + timedelta(days=1)).isoformat() if until else None,
        text=form["q"] or None,
        offset=(page - 1) * PAGE_SIZE,
        limit=PAGE_SIZE,
    )


def _day(value: str, name: str) -> date | None:
    if not value:
        return None
    try:
        if not _DATE.fullmatch(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"{name}: a date, YYYY-MM-DD\n") from exc
