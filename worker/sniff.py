"""What a file is, from its bytes (never from its URL or its Content-Type header)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class FileKind(str, Enum):
    CASE_PDF = "case_pdf"
    ITEM_IMAGE = "item_image"


@dataclass(frozen=True)
class FileType:
    content_type: str
    extension: str


PDF = FileType("application/pdf", "pdf")
PNG = FileType("image/png", "png")
JPEG = FileType("image/jpeg", "jpg")
GIF = FileType("image/gif", "gif")
WEBP = FileType("image/webp", "webp")

#: Bytes needed to recognise every type below.
SNIFF_BYTES = 16


def sniff(head: bytes) -> FileType | None:
    if head.startswith(b"%PDF-"):
        return PDF
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    return None


def accepts(kind: FileKind, file_type: FileType) -> bool:
    if kind is FileKind.CASE_PDF:
        return file_type is PDF
    return file_type.content_type.startswith("image/")


#: Bytes kept from the end of a download to check the file is whole.
TAIL_BYTES = 1024


def looks_complete(file_type: FileType, tail: bytes) -> bool:
    """Whether the end of the file is the end its format requires (a cut body is not)."""
    if file_type is PDF:
        return b"%%EOF" in tail
    if file_type is PNG:
        return b"IEND" in tail[-16:]
    if file_type is JPEG:
        return b"\xff\xd9" in tail[-64:]
    return True
