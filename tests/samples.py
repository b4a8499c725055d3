"""Real file bytes and payloads for the tests."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Callable
from typing import Any


def pdf(size: int = 2048) -> bytes:
    head = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"
    tail = b"\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
    filler = b"%" + b"x" * 77 + b"\n"
    body = (filler * (max(0, size - len(head) - len(tail)) // len(filler) + 1))
    return head + body[: max(0, size - len(head) - len(tail))] + tail


def png(width: int = 2, height: int = 2, seed: int = 0) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + bytes((seed + x + y) % 256 for x in range(width * 3))
                    for y in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def jpeg(size: int = 1024, seed: int = 0) -> bytes:
    body = bytes((seed + i) % 251 for i in range(max(0, size - 6)))
    return b"\xff\xd8\xff\xe0" + body + b"\xff\xd9"


def item(cf_ref: str, image_url: str | None = None, step: str = "PHOTOGRAPHY",
         **extra: Any) -> dict[str, Any]:
    value: dict[str, Any] = {"cfRef": cf_ref, "createdAt": "2026-11-28T10:00:00.000Z",
                             "stepAction": step, "description": "Façade côté rue"}
    if image_url is not None:
        value["imageUrl"] = image_url
    value.update(extra)
    return value


def case(cf_ref: str, case_url: str, items: list[dict[str, Any]] | None = None,
         **extra: Any) -> dict[str, Any]:
    value: dict[str, Any] = {"cfRef": cf_ref, "reportId": f"R-{cf_ref}", "caseUrl": case_url,
                             "createdAt": "2026-11-28T10:00:00.000Z", "frame": "default",
                             "closed": True, "items": items or []}
    value.update(extra)
    return value


def body(payload: Any) -> bytes:
    """Serialised as a JavaScript sender does (JSON.stringify: compact, raw UTF-8)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key_for(stem: str) -> Callable[[Any], str]:
    """A fetcher's ``key_for``: the stem plus the extension the bytes gave."""
    return lambda file_type: f"{stem}.{file_type.extension}"
