"""What a file is, from its bytes (never from its URL or its Content-Type header), and what
each kind of file may be.

Every byte the platform serves is evidence: a recognised media type other than the one
expected is kept, under its own extension, with a warning (:func:`judge`); only what is not
a recognised type (an error page: HTML, JSON, text) is refused. Whether a body is whole is
the transfer's business (Content-Length, chunked framing); :func:`end_check` is only for a
body that has neither, and never refuses bytes after a format's end marker.
"""

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
HEIC = FileType("image/heic", "heic")
HEIF = FileType("image/heif", "heif")
AVIF = FileType("image/avif", "avif")
TIFF = FileType("image/tiff", "tif")
BMP = FileType("image/bmp", "bmp")
MP4 = FileType("video/mp4", "mp4")
MOV = FileType("video/quicktime", "mov")

#: Bytes needed to recognise every type below (an ISO-BMFF ``ftyp`` box with a few brands).
SNIFF_BYTES = 64

#: ISO-BMFF brands (ISO/IEC 14496-12 ``ftyp``), by what they make the file.
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"mif2", b"miaf"})
_MP4_BRANDS = frozenset(
    {
        b"isom",
        b"iso2",
        b"iso3",
        b"iso4",
        b"iso5",
        b"iso6",
        b"iso7",
        b"iso8",
        b"iso9",
        b"mp41",
        b"mp42",
        b"mp71",
        b"avc1",
        b"dash",
        b"M4V ",
        b"M4VH",
        b"M4VP",
        b"MSNV",
        b"NDAS",
        b"f4v ",
        b"mmp4",
    }
)
#: Top-level atoms an old QuickTime file (before ``ftyp``) starts with.
_QUICKTIME_ATOMS = frozenset({b"moov", b"mdat", b"wide"})


def sniff(head: bytes) -> FileType | None:
    """The type of a file from its first :data:`SNIFF_BYTES` bytes; None if not recognised."""
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
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return TIFF
    if _bmp(head):
        return BMP
    if head[4:8] == b"ftyp":
        return _bmff(head)
    if head[4:8] in _QUICKTIME_ATOMS:
        return MOV
    return None


def _bmp(head: bytes) -> bool:
    # "BM", then reserved zeros at 6..10 and a DIB header of a known size at 14.
    return (
        len(head) >= 18
        and head[:2] == b"BM"
        and head[6:10] == b"\x00" * 4
        and int.from_bytes(head[14:18], "little") in {12, 40, 52, 56, 64, 108, 124}
    )


def _bmff(head: bytes) -> FileType | None:
    size = int.from_bytes(head[:4], "big")
    major = head[8:12]
    compatible = {head[i : i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
    brands = {major} | compatible
    if major in _AVIF_BRANDS or (major in _HEIF_BRANDS and compatible & _AVIF_BRANDS):
        return AVIF
    if major in _HEIC_BRANDS or (major in _HEIF_BRANDS and compatible & _HEIC_BRANDS):
        return HEIC
    if major in _HEIF_BRANDS:
        return HEIF
    if major == b"qt  ":
        return MOV
    if major in _MP4_BRANDS or brands & _MP4_BRANDS:
        return MP4
    return None


#: What each kind of file is expected to be; anything else recognised is kept with a warning.
_EXPECTED_IMAGE = (PNG, JPEG)
#: A VIDEO item holds its video, or a picture of it (imageUrl is "a PNG/JPG" in the DTO).
_EXPECTED_VIDEO = (MP4, MOV, PNG, JPEG)


def expected(kind: FileKind, step_action: str | None = None) -> tuple[FileType, ...]:
    if kind is FileKind.CASE_PDF:
        return (PDF,)
    return _EXPECTED_VIDEO if step_action == "VIDEO" else _EXPECTED_IMAGE


def describe(types: tuple[FileType, ...]) -> str:
    """What a slot expects, in words (for errors and warnings)."""
    return {
        (PDF,): "a PDF",
        _EXPECTED_IMAGE: "a PNG or JPEG image",
        _EXPECTED_VIDEO: "a video (MP4, QuickTime) or a PNG or JPEG image",
    }[types]


class Refused(Exception):
    """The body is not a file of a kind this slot may hold (an error page, or not a PDF)."""


def judge(kind: FileKind, file_type: FileType | None, step_action: str | None = None) -> str | None:
    """Whether a body of ``file_type`` is kept for this slot: None when it is what was
    expected, a warning when it is another recognised type (kept, under its own extension);
    raises Refused otherwise.

    The case PDF must be a PDF: it is archived as ``case.pdf``, and a report that is an
    image is the platform's error, which a retry may fix (the case stays incomplete).
    """
    wanted = expected(kind, step_action)
    if file_type in wanted:
        return None
    found = file_type.content_type if file_type else "unrecognised content"
    if file_type is None or kind is FileKind.CASE_PDF:
        raise Refused(f"expected {describe(wanted)}, got {found}")
    return f"expected {describe(wanted)}, got {found}: stored as .{file_type.extension}"


# -- whole or not, for a body without framing --------------------------------------------


class EndCheck:
    """Fed a body's bytes in order, says whether the file reached the end its format has.

    Only for a body with neither Content-Length nor chunked framing (it ends when the
    connection closes, which a dropped connection also does). Bytes after the end are
    never a reason to refuse: a motion photo is a JPEG followed by a video.
    """

    def feed(self, chunk: bytes | memoryview) -> None:
        pass

    def whole(self) -> bool:
        return True


class _Marker(EndCheck):
    """Whole once ``marker`` was seen anywhere (a PDF's ``%%EOF``: updates add more)."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.carry = b""
        self.seen = False

    def feed(self, chunk: bytes | memoryview) -> None:
        if self.seen:
            return
        window = self.carry + chunk
        self.seen = self.marker in window
        self.carry = window[-(len(self.marker) - 1) :]

    def whole(self) -> bool:
        return self.seen


class _Walk(EndCheck):
    """Walks a file's structure (chunks, segments, boxes) by their declared lengths.

    ``step`` is given :attr:`need` bytes at the next structure's offset and answers how far
    the next one is, or :data:`_END` (the format's end is reached), or :data:`_LOST` (what
    follows is not the structure any more: it is treated as bytes after the end).
    """

    need = 8

    def __init__(self, start: int) -> None:
        self.pos = start  # where the next structure starts, counted from the file's start
        self.total = 0  # bytes fed so far
        self.buffer = b""  # the bytes from ``pos`` on, once reached
        self.ended = False
        self.after = b""  # what followed the last structure read, in the chunk that ended it

    def step(self, header: bytes) -> int | None:
        raise NotImplementedError

    def feed(self, chunk: bytes | memoryview) -> None:
        start, self.total = self.total, self.total + len(chunk)
        if self.ended or self.pos >= self.total:
            return
        self.buffer = self.buffer + chunk if self.pos < start else bytes(chunk[self.pos - start :])
        at = self.total - len(self.buffer)  # the file offset of buffer[0]
        while not self.ended and self.pos - at + self.need <= len(self.buffer):
            offset = self.pos - at
            advance = self.step(self.buffer[offset : offset + self.need])
            if advance is None:
                self.ended = True
                self.after = self.buffer[offset + self.need :]
            else:
                self.pos += advance
        self.buffer = self.buffer[self.pos - at :] if self.pos < self.total else b""

    def whole(self) -> bool:
        return self.ended


class _PngWalk(_Walk):
    """A PNG ends with its IEND chunk."""

    def __init__(self) -> None:
        super().__init__(8)

    def step(self, header: bytes) -> int | None:
        if header[4:8] == b"IEND":
            return None
        return 12 + int.from_bytes(header[:4], "big")


class _JpegWalk(_Walk):
    """A JPEG's header segments by their lengths (so an EXIF thumbnail's end is skipped),
    then its end marker (FFD9) after the first scan."""

    need = 4

    def __init__(self) -> None:
        super().__init__(2)
        self.scan: _Marker | None = None

    def step(self, header: bytes) -> int | None:
        if header[0] != 0xFF or header[1] in {0xD9, 0xDA}:
            # The first scan (or the end, or what is not a segment): FFD9 from here on.
            self.scan = _Marker(b"\xff\xd9")
            self.scan.feed(header)
            return None
        if header[1] == 0xFF:
            return 1  # a fill byte
        if header[1] in {0x01, *range(0xD0, 0xD9)}:
            return 2  # a marker without a length
        return 2 + int.from_bytes(header[2:4], "big")

    def feed(self, chunk: bytes | memoryview) -> None:
        if self.scan is not None:
            self.scan.feed(chunk)
            return
        super().feed(chunk)
        if self.scan is not None:
            self.scan.feed(self.after)

    def whole(self) -> bool:
        return self.scan is not None and self.scan.whole()


#: Boxes found at the top level of MP4, QuickTime and HEIF files (ISO/IEC 14496-12, QTFF).
_TOP_LEVEL_BOXES = frozenset(
    {
        b"ftyp",
        b"styp",
        b"free",
        b"skip",
        b"wide",
        b"mdat",
        b"moov",
        b"moof",
        b"mfra",
        b"meta",
        b"pdin",
        b"uuid",
        b"sidx",
        b"ssix",
        b"prft",
        b"emsg",
        b"pnot",
        b"junk",
        b"udta",
    }
)


class _BoxWalk(_Walk):
    """ISO-BMFF (MP4, QuickTime, HEIF): no end marker, but no box may reach past the end.
    What does not read as a box after the last whole one is bytes after the end."""

    def __init__(self) -> None:
        super().__init__(0)
        self.lost = False

    def step(self, header: bytes) -> int | None:
        size = int.from_bytes(header[:4], "big")
        if size < 8 or header[4:8] not in _TOP_LEVEL_BOXES:
            # 0: to the end of the file; 1: a 64-bit size follows; an unknown type: bytes
            # after the file (a trailer). None of them is a cut.
            self.lost = True
            return None
        return size

    def whole(self) -> bool:
        return self.lost or self.pos <= self.total


class _RiffWalk(_Walk):
    """A RIFF file (WebP) declares its length in its first header."""

    def __init__(self) -> None:
        super().__init__(0)

    def step(self, header: bytes) -> int | None:
        if self.pos:
            return None
        return 8 + int.from_bytes(header[4:8], "little")

    def whole(self) -> bool:
        return self.pos <= self.total


def end_check(file_type: FileType) -> EndCheck:
    """What tells, for a body without framing, that a file of this type is whole."""
    if file_type is PDF:
        return _Marker(b"%%EOF")
    if file_type is PNG:
        return _PngWalk()
    if file_type is JPEG:
        return _JpegWalk()
    if file_type in (MP4, MOV, HEIC, HEIF, AVIF):
        return _BoxWalk()
    if file_type is WEBP:
        return _RiffWalk()
    return EndCheck()  # GIF, TIFF, BMP: nothing cheap to tell by
