"""A small stand-in for the certificate platform, to see casefetch work (``casefetch demo``).

It serves a certificate PDF, a photo (PNG) and a signature (JPEG) for each case over HTTP, and
sends signed webhooks announcing those cases to the receiver, exactly as the platform would.
The files are drawn here, in code, so the demo needs nothing but the installed package; they
are real files a PDF reader and an image viewer open.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

import urllib3

from casefetch import config
from casefetch.errors import CasefetchError
from casefetch_tools import samples
from casefetch_tools.background_server import BackgroundServer
from casefetch_tools.sender import auth_headers

FILES_PATH = "/files"
#: (file name, content type) of the files every demo case has.
PDF_FILE = ("report.pdf", "application/pdf")
PHOTO_FILE = ("photo.png", "image/png")
SIGNATURE_FILE = ("signature.jpg", "image/jpeg")


class DemoError(CasefetchError):
    """The demo could not deliver its cases (receiver unreachable, refused, ...)."""


# -- the files ------------------------------------------------------------------------------


def certificate_pdf(cf_ref: str, report_id: str) -> bytes:
    """A one-page PDF naming the case."""
    return samples.pdf(
        [
            f"Certificate {cf_ref}",
            f"Report {report_id}",
            "Sample file served by the casefetch demo platform.",
        ]
    )


# -- the cases ------------------------------------------------------------------------------


def _now() -> str:
    """ISO 8601 with milliseconds and a Z, as JavaScript's Date.toISOString() writes it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def case_payload(cf_ref: str, base_url: str) -> dict[str, Any]:
    """A case as the platform announces it, its files on the demo's file server."""
    folder = f"{base_url.rstrip('/')}{FILES_PATH}/{cf_ref}"
    created = _now()
    return {
        "cfRef": cf_ref,
        "reportId": f"R-{cf_ref}",
        "caseUrl": f"{folder}/{PDF_FILE[0]}?token=demo-signature",
        "createdAt": created,
        "frame": "demo",
        "closed": True,
        "items": [
            {
                "cfRef": f"{cf_ref}-PHOTO",
                "createdAt": created,
                "stepAction": "PHOTOGRAPHY",
                "data": "Façade",
                "description": "Front of the building",
                "geolocLatitude": "48.8566",
                "geolocLongitude": 2.3522,
                "imageUrl": f"{folder}/{PHOTO_FILE[0]}",
            },
            {
                "cfRef": f"{cf_ref}-SIGN",
                "createdAt": created,
                "stepAction": "SIGNATURE",
                "imageUrl": f"{folder}/{SIGNATURE_FILE[0]}",
            },
            {
                "cfRef": f"{cf_ref}-NOTE",
                "createdAt": created,
                "stepAction": "TEXT_FIELD",
                "data": "Bâtiment conforme ✓",
                "imageUrl": "",
            },
        ],
    }


def case_files(cf_ref: str) -> dict[str, tuple[bytes, str]]:
    """The files of one case, by name: (bytes, content type)."""
    seed = zlib.crc32(cf_ref.encode()) % 7
    return {
        PDF_FILE[0]: (certificate_pdf(cf_ref, f"R-{cf_ref}"), PDF_FILE[1]),
        PHOTO_FILE[0]: (samples.png(160, 120, seed), PHOTO_FILE[1]),
        SIGNATURE_FILE[0]: (samples.jpeg(seed=seed), SIGNATURE_FILE[1]),
    }


def body(payload: dict[str, Any]) -> bytes:
    """Serialised as the platform does (JSON.stringify: compact, raw UTF-8)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# -- the file server ------------------------------------------------------------------------


class FileServer(BackgroundServer):
    """Serves ``/files/<cfRef>/<name>`` for any cfRef, in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        try:
            super().__init__(host, port, name="demo-files")
        except OSError as exc:
            raise DemoError(f"cannot serve files on {host}:{port}: {exc.strerror}") from exc

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        found = _lookup(urlsplit(request.path).path)
        if found is None:
            request.send_response(404)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        data, content_type = found
        request.send_response(200)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)


def _lookup(path: str) -> tuple[bytes, str] | None:
    parts = path.strip("/").split("/")
    if len(parts) != 3 or f"/{parts[0]}" != FILES_PATH:
        return None
    return case_files(parts[1]).get(parts[2])


# -- the sender -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """One way of authenticating, as ``casefetch_tools.sender.auth_headers`` takes it."""

    bearer: str | None = None
    hmac_pair: str | None = None
    basic: str | None = None

    @classmethod
    def from_env(cls, env: config.Env) -> Credentials:
        """The first credential the receiver accepts, HMAC first (what the platform uses)."""
        for name, field in (
            ("WEBHOOK_HMAC_KEYS", "hmac_pair"),
            ("WEBHOOK_BEARER_TOKENS", "bearer"),
            ("WEBHOOK_BASIC_USERS", "basic"),
        ):
            values = config.read_list(env, name)
            if values:
                return cls(**{field: values[0]})
        raise DemoError(
            "no credential: set WEBHOOK_HMAC_KEYS, WEBHOOK_BEARER_TOKENS or "
            "WEBHOOK_BASIC_USERS (the receiver's), or pass --hmac/--bearer/--basic"
        )

    def headers(self, payload: bytes) -> dict[str, str]:
        try:
            return auth_headers(
                payload, bearer=self.bearer, hmac_pair=self.hmac_pair, basic=self.basic
            )
        except ValueError as exc:
            raise DemoError(str(exc)) from exc


def send(
    url: str,
    payload: bytes,
    credentials: Credentials,
    timeout: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """POST one webhook; retry while the receiver is unreachable or busy, up to ``timeout``."""
    headers = {**credentials.headers(payload), "Content-Type": "application/json"}
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = urllib3.request(
                "POST", url, body=payload, headers=headers, retries=False, timeout=10
            )
            problem = f"HTTP {response.status}: {response.data[:200].decode('utf-8', 'replace')}"
            if response.status == 202:
                answer: dict[str, Any] = json.loads(response.data)
                return answer
            if response.status < 500 and response.status != 429:
                raise DemoError(f"the receiver refused the webhook: {problem}")
        except urllib3.exceptions.HTTPError as exc:
            problem = f"cannot reach {url}: {exc}"
        if time.monotonic() > deadline:
            raise DemoError(problem)
        sleep(1.0)


def cf_refs(count: int, stamp: str | None = None) -> Iterator[str]:
    stamp = stamp or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    for number in range(1, count + 1):
        yield f"DEMO-{stamp}-{number}"


# -- the whole platform ---------------------------------------------------------------------


def run(
    receiver_url: str,
    credentials: Credentials,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    public_url: str | None = None,
    cases: int = 3,
    interval: float = 2.0,
    echo: Callable[[str], None] = print,
) -> None:
    """Serve the files, announce ``cases`` cases, then keep serving until SIGINT/SIGTERM."""
    server = FileServer(host, port).start()
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    shown = "127.0.0.1" if host in {"0.0.0.0", "::"} else host
    base_url = public_url or f"http://{shown}:{server.port}"
    echo(f"demo platform: files on {base_url}{FILES_PATH}/, webhooks to {receiver_url}")
    try:
        for number, cf_ref in enumerate(cf_refs(cases)):
            if number and stopping.wait(interval):  # pacing, like a platform over time
                break
            answer = send(receiver_url, body(case_payload(cf_ref, base_url)), credentials)
            echo(f"sent case {cf_ref}: delivery {answer.get('deliveryId')}")
        echo("serving the files for the workers; Ctrl-C stops")
        stopping.wait()
    finally:
        server.stop()
