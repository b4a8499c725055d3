"""Real file bytes and payloads for the tests (the file builders are casefetch_tools.samples)."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from casefetch_tools.samples import jpeg as samples_jpeg
from casefetch_tools.samples import padded
from casefetch_tools.samples import png as png  # the tests build PNGs as the demo does
from worker.storage import commit_or_discard


def pdf(size: int = 2048) -> bytes:
    return padded("pdf", size)


def jpeg(size: int = 1024, seed: int = 0) -> bytes:
    return padded("jpg", size, seed)


def item(
    cf_ref: str, image_url: str | None = None, step: str = "PHOTOGRAPHY", **extra: Any
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "cfRef": cf_ref,
        "createdAt": "2026-11-28T10:00:00.000Z",
        "stepAction": step,
        "description": "Façade côté rue",
    }
    if image_url is not None:
        value["imageUrl"] = image_url
    value.update(extra)
    return value


def case(
    cf_ref: str, case_url: str, items: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "cfRef": cf_ref,
        "reportId": f"R-{cf_ref}",
        "caseUrl": case_url,
        "createdAt": "2026-11-28T10:00:00.000Z",
        "frame": "default",
        "closed": True,
        "items": items or [],
    }
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
        check.feed(data[start : start + chunk])
    return check.whole()


def key_for(stem: str) -> Callable[[Any], str]:
    """A fetcher's ``key_for``: the stem plus the extension the bytes gave."""
    return lambda file_type: f"{stem}.{file_type.extension}"


class _Closable(Protocol):
    def close(self) -> None: ...


_C = TypeVar("_C", bound=_Closable)
#: What tests built that holds connections, closed when the test ends (see conftest).
_to_close: list[_Closable] = []


def closed_after_test(thing: _C) -> _C:
    """``thing`` (a Fetcher), closed when the test ends."""
    _to_close.append(thing)
    return thing


def close_built() -> None:
    while _to_close:
        _to_close.pop().close()


def fetch_file(
    fetcher: Any,
    url: str,
    kind: Any,
    storage: Any,
    key_for: Callable[[Any], str],
    step_action: str | None = None,
) -> Any:
    """One file fetched as the pipeline fetches it: staged by the fetcher, then put in place
    (dropped if that fails). Returns the FetchResult; raises the DownloadError."""
    result, staged = fetcher.fetch_staged(url, kind, storage, key_for, step_action)
    commit_or_discard(staged)
    return result


# -- media as phones and cameras write them ------------------------------------------------


def real_jpeg(thumbnail: bool = False) -> bytes:
    """A valid baseline JPEG (8x8, grey) that any decoder reads; with ``thumbnail``, an EXIF
    segment holds a smaller JPEG, end marker (FFD9) included, as cameras write them."""
    return samples_jpeg(8, 8, thumbnail=thumbnail)


def box(kind: bytes, payload: bytes) -> bytes:
    """An ISO-BMFF box."""
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def bmff(major: bytes, compatible: list[bytes], media: bytes = b"\x00" * 256) -> bytes:
    """An ISO-BMFF file (MP4, QuickTime, HEIF): its ftyp box with these brands, then an
    mdat box with the media bytes."""
    ftyp = box(b"ftyp", major + b"\x00\x00\x02\x00" + b"".join(compatible))
    return ftyp + box(b"free", b"") + box(b"mdat", media)


def mp4(seed: int = 0) -> bytes:
    return bmff(
        b"isom", [b"isom", b"iso2", b"avc1", b"mp41"], bytes((seed + i) % 256 for i in range(2048))
    )


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
