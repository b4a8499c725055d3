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


def ends_whole(file_type: Any, data: bytes, chunk: int = 4096) -> bool:
    """Whether the format's own end check (for a body without framing) finds ``data`` whole,
    fed in chunks as the fetcher feeds it."""
    from worker.sniff import end_check

    check = end_check(file_type)
    for start in range(0, len(data), chunk):
        check.feed(data[start:start + chunk])
    return check.whole()


def key_for(stem: str) -> Callable[[Any], str]:
    """A fetcher's ``key_for``: the stem plus the extension the bytes gave."""
    return lambda file_type: f"{stem}.{file_type.extension}"


# -- media as phones and cameras write them ------------------------------------------------

def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def real_jpeg(thumbnail: bool = False) -> bytes:
    """A valid baseline JPEG (8x8, grey) that any decoder reads: one Huffman code per table,
    so the scan is two bits, "DC difference 0" and "end of block". With ``thumbnail``, an
    EXIF segment holds a smaller JPEG, end marker (FFD9) included, as cameras write them."""
    exif = b""
    if thumbnail:
        exif = _segment(0xE1, b"Exif\x00\x00MM\x00*\x00\x00\x00\x08" + b"\x00" * 6 + real_jpeg())
    frame = struct.pack(">BHHB", 8, 8, 8, 1) + b"\x01\x11\x00"
    return (b"\xff\xd8"
            + _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00") + exif
            + _segment(0xDB, b"\x00" + b"\x01" * 64)
            + _segment(0xC0, frame)
            + _segment(0xC4, b"\x00" + b"\x01" + b"\x00" * 15 + b"\x00")  # DC: symbol 0
            + _segment(0xC4, b"\x10" + b"\x01" + b"\x00" * 15 + b"\x00")  # AC: EOB
            + _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
            + b"\x3f"  # "0" (DC 0), "0" (EOB), then 1-bits to the byte's end
            + b"\xff\xd9")


def box(kind: bytes, payload: bytes) -> bytes:
    """An ISO-BMFF box."""
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def bmff(major: bytes, compatible: list[bytes], media: bytes = b"\x00" * 256) -> bytes:
    """An ISO-BMFF file (MP4, QuickTime, HEIF): its ftyp box with these brands, then an
    mdat box with the media bytes."""
    ftyp = box(b"ftyp", major + b"\x00\x00\x02\x00" + b"".join(compatible))
    return ftyp + box(b"free", b"") + box(b"mdat", media)


def mp4(seed: int = 0) -> bytes:
    return bmff(b"isom", [b"isom", b"iso2", b"avc1", b"mp41"],
                bytes((seed + i) % 256 for i in range(2048)))


def quicktime() -> bytes:
    return bmff(b"qt  ", [b"qt  "]) + box(b"moov", box(b"mvhd", b"\x00" * 100))


def heic() -> bytes:
    return bmff(b"heic", [b"mif1", b"heic"]) + box(b"meta", b"\x00" * 32)


def avif() -> bytes:
    return bmff(b"avif", [b"avif", b"mif1", b"miaf", b"MA1B"]) + box(b"meta", b"\x00" * 32)


def motion_photo() -> bytes:
    """A Samsung / Google motion photo: a whole JPEG, then the MP4 video right after it."""
    return real_jpeg(thumbnail=True) + mp4(seed=7)


def camera_trailer() -> bytes:
    """A JPEG with what Samsung cameras append after its end (SEFH ... SEFT)."""
    trailer = b"\x00\x00\x01\x00SEFH" + b"Image_UTC_Data1700000000000" + b"\x1b\x00\x00\x00SEFT"
    return real_jpeg() + trailer
