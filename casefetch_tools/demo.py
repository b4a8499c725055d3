"""A small stand-in for the certificate platform, to see casefetch work (``casefetch demo``).

It serves a certificate PDF, a photo (PNG) and a signature (JPEG) for each case over HTTP, and
sends signed webhooks announcing those cases to the receiver, exactly as the platform would.
The files are drawn here, in code, so the demo needs nothing but the installed package; they
are real files a PDF reader and an image viewer open.
"""

from __future__ import annotations

import json
import math
import signal
import struct
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
    lines = [f"Certificate {cf_ref}", f"Report {report_id}",
             "Sample file served by the casefetch demo platform."]
    text = "".join(f"BT /F1 {18 if i == 0 else 12} Tf 72 {720 - 28 * i} Td ({_pdf_text(line)})"
                   f" Tj ET\n" for i, line in enumerate(lines)).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(text) + text + b"endstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def _pdf_text(value: str) -> str:
    safe = value.encode("latin-1", "replace").decode("latin-1")
    return safe.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def photo_png(seed: int = 0, width: int = 160, height: int = 120) -> bytes:
    """A colourful gradient, different for each seed."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    rows = bytearray()
    for y in range(height):
        rows.append(0)
        for x in range(width):
            rows += bytes(((x * 255 // width + seed * 40) % 256, y * 255 // height,
                           (128 + int(100 * math.sin((x + y + seed * 9) / 12))) % 256))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(rows), 9)) + chunk(b"IEND", b""))


# Baseline JPEG, greyscale, one flat shade per 8x8 block: only DC coefficients are coded,
# with the standard luminance DC table and a one-symbol AC table (end of block).
_DC_BITS = (0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)
_DC_VALUES = tuple(range(12))


def _huffman_codes(bits: tuple[int, ...], values: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    codes, code, index = {}, 0, 0
    for length, count in enumerate(bits, start=1):
        for _ in range(count):
            codes[values[index]] = (code, length)
            code += 1
            index += 1
        code <<= 1
    return codes


def signature_jpeg(seed: int = 0, width: int = 192, height: int = 64) -> bytes:
    """A pen stroke on paper, drawn in 8x8 blocks."""
    columns, rows = width // 8, height // 8
    shades = [[235] * columns for _ in range(rows)]
    for col in range(1, columns - 1):
        row = int((rows - 1) / 2 + (rows / 3) * math.sin(col / 2.2 + seed))
        shades[max(0, min(rows - 1, row))][col] = 30
    dc_codes = _huffman_codes(_DC_BITS, _DC_VALUES)
    bits: list[int] = []

    def put(value: int, length: int) -> None:
        bits.extend((value >> shift) & 1 for shift in range(length - 1, -1, -1))

    previous = 0
    for row_shades in shades:
        for shade in row_shades:
            dc = 8 * (shade - 128)
            diff, previous = dc - previous, dc
            size = abs(diff).bit_length()
            put(*dc_codes[size])
            if size:
                put(diff if diff > 0 else diff + (1 << size) - 1, size)
            put(0, 1)  # end of block: the AC table's only code
    bits.extend([1] * (-len(bits) % 8))
    scan = bytearray()
    for start in range(0, len(bits), 8):
        byte = int("".join(map(str, bits[start:start + 8])), 2)
        scan += b"\xff\x00" if byte == 0xFF else bytes((byte,))

    def segment(marker: int, payload: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload

    return (b"\xff\xd8"
            + segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
            + segment(0xDB, b"\x00" + b"\x01" * 64)
            + segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
            + segment(0xC4, b"\x00" + bytes(_DC_BITS) + bytes(_DC_VALUES))
            + segment(0xC4, b"\x10" + bytes((1,) + (0,) * 15) + b"\x00")
            + segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
            + bytes(scan) + b"\xff\xd9")


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
            {"cfRef": f"{cf_ref}-PHOTO", "createdAt": created, "stepAction": "PHOTOGRAPHY",
             "data": "Façade", "description": "Front of the building",
             "geolocLatitude": "48.8566", "geolocLongitude": 2.3522,
             "imageUrl": f"{folder}/{PHOTO_FILE[0]}"},
            {"cfRef": f"{cf_ref}-SIGN", "createdAt": created, "stepAction": "SIGNATURE",
             "imageUrl": f"{folder}/{SIGNATURE_FILE[0]}"},
            {"cfRef": f"{cf_ref}-NOTE", "createdAt": created, "stepAction": "TEXT_FIELD",
             "data": "Bâtiment conforme ✓", "imageUrl": ""},
        ],
    }


def case_files(cf_ref: str) -> dict[str, tuple[bytes, str]]:
    """The files of one case, by name: (bytes, content type)."""
    seed = zlib.crc32(cf_ref.encode()) % 7
    return {PDF_FILE[0]: (certificate_pdf(cf_ref, f"R-{cf_ref}"), PDF_FILE[1]),
            PHOTO_FILE[0]: (photo_png(seed), PHOTO_FILE[1]),
            SIGNATURE_FILE[0]: (signature_jpeg(seed), SIGNATURE_FILE[1])}


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
        for name, field in (("WEBHOOK_HMAC_KEYS", "hmac_pair"),
                            ("WEBHOOK_BEARER_TOKENS", "bearer"),
                            ("WEBHOOK_BASIC_USERS", "basic")):
            values = config.read_list(env, name)
            if values:
                return cls(**{field: values[0]})
        raise DemoError("no credential: set WEBHOOK_HMAC_KEYS, WEBHOOK_BEARER_TOKENS or "
                        "WEBHOOK_BASIC_USERS (the receiver's), or pass --hmac/--bearer/--basic")

    def headers(self, payload: bytes) -> dict[str, str]:
        try:
            return auth_headers(payload, bearer=self.bearer, hmac_pair=self.hmac_pair,
                                basic=self.basic)
        except ValueError as exc:
            raise DemoError(str(exc)) from exc


def send(url: str, payload: bytes, credentials: Credentials, timeout: float = 60.0,
         sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """POST one webhook; retry while the receiver is unreachable or busy, up to ``timeout``."""
    headers = {**credentials.headers(payload), "Content-Type": "application/json"}
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = urllib3.request("POST", url, body=payload, headers=headers,
                                       retries=False, timeout=10)
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

def run(receiver_url: str, credentials: Credentials, *, host: str = "127.0.0.1",
        port: int = 8000, public_url: str | None = None, cases: int = 3,
        interval: float = 2.0, echo: Callable[[str], None] = print) -> None:
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
