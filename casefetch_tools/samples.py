"""Sample files for the demo, the benchmarks and the tests: a PDF a viewer draws, a PNG and a
baseline JPEG any decoder reads, and files of an exact size between a format's first and last
bytes (what a sniffer and a completeness check look at)."""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence

# -- PDF -----------------------------------------------------------------------------------


def pdf(lines: Sequence[str]) -> bytes:
    """A one-page PDF of text, the first line as a title."""
    text = "".join(
        f"BT /F1 {18 if i == 0 else 12} Tf 72 {720 - 28 * i} Td ({_pdf_text(line)}) Tj ET\n"
        for i, line in enumerate(lines)
    ).encode("latin-1")
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
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def _pdf_text(value: str) -> str:
    safe = value.encode("latin-1", "replace").decode("latin-1")
    return safe.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


# -- PNG -----------------------------------------------------------------------------------


def png(width: int = 2, height: int = 2, seed: int = 0) -> bytes:
    """A colourful gradient, different for each seed."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    rows = bytearray()
    for y in range(height):
        rows.append(0)
        for x in range(width):
            rows += bytes(
                (
                    (x * 255 // width + seed * 40) % 256,
                    y * 255 // height,
                    (128 + int(100 * math.sin((x + y + seed * 9) / 12))) % 256,
                )
            )
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + chunk(b"IEND", b"")
    )


# -- JPEG ----------------------------------------------------------------------------------

# Baseline JPEG, greyscale, one flat shade per 8x8 block: only DC coefficients are coded,
# with the standard luminance DC table and a one-symbol AC table (end of block).
_DC_BITS = (0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)
_DC_VALUES = tuple(range(12))
_EXIF_HEADER = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08" + b"\x00" * 6


def _huffman_codes(bits: tuple[int, ...], values: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    codes, code, index = {}, 0, 0
    for length, count in enumerate(bits, start=1):
        for _ in range(count):
            codes[values[index]] = (code, length)
            code += 1
            index += 1
        code <<= 1
    return codes


def segment(marker: int, payload: bytes) -> bytes:
    """One JPEG marker segment: FF, the marker, the length, the payload."""
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def jpeg(width: int = 192, height: int = 64, seed: int = 0, thumbnail: bool = False) -> bytes:
    """A pen stroke on paper, drawn in 8x8 blocks. With ``thumbnail``, an EXIF segment holds
    a smaller JPEG, end marker (FFD9) included, as cameras write them."""
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
        byte = int("".join(map(str, bits[start : start + 8])), 2)
        scan += b"\xff\x00" if byte == 0xFF else bytes((byte,))
    exif = segment(0xE1, _EXIF_HEADER + jpeg(8, 8)) if thumbnail else b""
    return (
        b"\xff\xd8"
        + segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
        + exif
        + segment(0xDB, b"\x00" + b"\x01" * 64)
        + segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
        + segment(0xC4, b"\x00" + bytes(_DC_BITS) + bytes(_DC_VALUES))
        + segment(0xC4, b"\x10" + bytes((1,) + (0,) * 15) + b"\x00")
        + segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
        + bytes(scan)
        + b"\xff\xd9"
    )


# -- files of an exact size ----------------------------------------------------------------

#: Printable bytes: no format's end marker can appear in them by chance.
FILL = bytes(range(33, 127))


def head_and_tail(kind: str) -> tuple[bytes, bytes]:
    """The first and last bytes of a ``pdf``, ``png`` or ``jpg`` file."""
    if kind == "pdf":
        return (
            b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%",
            b"\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n",
        )
    if kind == "png":
        return (b"\x89PNG\r\n\x1a\n", b"\x00\x00\x00\x00IEND\xaeB`\x82")
    return b"\xff\xd8\xff\xe0", b"\xff\xd9"


def filler(size: int, seed: int = 0) -> bytes:
    """``size`` printable bytes; another seed, other bytes."""
    start = seed % len(FILL)
    return (FILL[start:] + FILL * (size // len(FILL) + 1))[:size]


def padded(kind: str, size: int, seed: int = 0) -> bytes:
    """A ``kind`` file of exactly ``size`` bytes (at least its head and tail)."""
    head, tail = head_and_tail(kind)
    return head + filler(max(0, size - len(head) - len(tail)), seed) + tail
