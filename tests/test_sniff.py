"""What a file is from its bytes, what each slot keeps, and when a body without framing is
whole: units over bytes, and properties (any bytes, in any chunks, never an exception)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests import samples
from tests.samples import ends_whole
from tests.test_headers import PROPERTIES
from worker import sniff as types
from worker.sniff import SNIFF_BYTES, FileKind, Refused, end_check, judge, sniff


@pytest.mark.parametrize(
    "data,expected",
    [
        (samples.real_jpeg(), types.JPEG),
        (samples.motion_photo(), types.JPEG),
        (samples.png(), types.PNG),
        (samples.pdf(), types.PDF),
        (samples.heic(), types.HEIC),
        (samples.bmff(b"mif1", [b"mif1", b"heic"]), types.HEIC),
        (samples.bmff(b"mif1", [b"mif1"]), types.HEIF),
        (samples.avif(), types.AVIF),
        (samples.bmff(b"mif1", [b"mif1", b"avif"]), types.AVIF),
        (samples.mp4(), types.MP4),
        (samples.bmff(b"XAVC", [b"XAVC", b"mp42", b"iso2"]), types.MP4),
        (samples.quicktime(), types.MOV),
        (samples.box(b"wide", b"") + samples.box(b"mdat", b"\x00" * 64), types.MOV),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", types.WEBP),
        (b"GIF87a" + bytes(16), types.GIF),
        (b"MM\x00*\x00\x00\x00\x08" + bytes(16), types.TIFF),
        (
            b"BM" + bytes(4) + bytes(4) + b"\x36\x00\x00\x00" + b"\x28\x00\x00\x00" + bytes(40),
            types.BMP,
        ),
        (samples.bmff(b"M4A ", [b"M4A "]), None),  # audio: not evidence a slot may hold
        (b"<html><body>Login</body></html>", None),
        (b'{"error": "expired"}', None),
        (b"BMW is a car maker", None),
        (b"", None),
    ],
)
def test_types_are_told_by_their_bytes(data: bytes, expected: types.FileType | None) -> None:
    assert sniff(data[:SNIFF_BYTES]) is expected


def test_each_slot_keeps_what_it_expects_silently_and_other_media_with_a_warning() -> None:
    assert judge(FileKind.ITEM_IMAGE, types.JPEG) is None
    assert judge(FileKind.ITEM_IMAGE, types.PNG, "SIGNATURE") is None
    assert judge(FileKind.ITEM_IMAGE, types.MP4, "VIDEO") is None
    assert judge(FileKind.ITEM_IMAGE, types.MOV, "VIDEO") is None
    assert judge(FileKind.ITEM_IMAGE, types.JPEG, "VIDEO") is None
    warning = judge(FileKind.ITEM_IMAGE, types.HEIC, "PHOTOGRAPHY")
    assert warning == "expected a PNG or JPEG image, got image/heic: stored as .heic"
    assert "stored as .mp4" in (judge(FileKind.ITEM_IMAGE, types.MP4, "PHOTOGRAPHY") or "")
    assert "stored as .avif" in (judge(FileKind.ITEM_IMAGE, types.AVIF, "VIDEO") or "")
    assert judge(FileKind.CASE_PDF, types.PDF) is None
    with pytest.raises(Refused, match="expected a PDF, got image/png"):
        judge(FileKind.CASE_PDF, types.PNG)
    for kind in FileKind:
        with pytest.raises(Refused, match="unrecognised content"):
            judge(kind, None, "VIDEO")


@pytest.mark.parametrize(
    "data",
    [
        samples.real_jpeg(thumbnail=True),
        samples.png(16, 16),
        samples.pdf(5000),
        samples.mp4(),
        samples.quicktime(),
        samples.heic(),
    ],
)
@pytest.mark.parametrize("chunk", [1, 3, 64, 100_000])
def test_an_unframed_body_is_whole_at_its_formats_end_and_not_before(
    data: bytes, chunk: int
) -> None:
    file_type = sniff(data[:SNIFF_BYTES])
    assert ends_whole(file_type, data, chunk)
    assert ends_whole(file_type, data + b"\x00\x01 trailing \xff\xd9 bytes", chunk)
    assert not ends_whole(file_type, data[: len(data) * 2 // 3], chunk)
    assert not ends_whole(file_type, data[: len(data) - 8], chunk)


def test_a_jpegs_end_is_its_own_not_its_thumbnails() -> None:
    data = samples.real_jpeg(thumbnail=True)
    thumbnail_end = data.index(b"\xff\xd9") + 2
    assert thumbnail_end < len(data) - 2
    assert not ends_whole(types.JPEG, data[: thumbnail_end + 10])
    assert ends_whole(types.JPEG, samples.motion_photo())
    assert ends_whole(types.JPEG, samples.camera_trailer())


@PROPERTIES
@given(data=st.binary(max_size=2048))
def test_any_bytes_are_sniffed_and_judged_without_an_exception(data: bytes) -> None:
    found = sniff(data[:SNIFF_BYTES])
    for kind in FileKind:
        for step in (None, "VIDEO", "PHOTOGRAPHY"):
            try:
                warning = judge(kind, found, step)
            except Refused:
                assert found is None or kind is FileKind.CASE_PDF
            else:
                assert found is not None and (warning is None or found.extension in warning)


@PROPERTIES
@given(
    head=st.sampled_from(
        [
            b"%PDF-",
            b"\x89PNG\r\n\x1a\n",
            b"\xff\xd8\xff",
            samples.bmff(b"isom", [b"isom"])[:24],
            b"RIFF\x00\x00\x00\x10WEBP",
            b"GIF89a",
            b"",
        ]
    ),
    body=st.binary(max_size=4096),
    cuts=st.lists(st.integers(0, 4096), max_size=8),
)
def test_any_bytes_in_any_chunks_give_an_answer_the_chunks_do_not_change(
    head: bytes, body: bytes, cuts: list[int]
) -> None:
    data = head + body
    file_type = sniff(data[:SNIFF_BYTES]) or types.PDF
    whole = ends_whole(file_type, data, len(data) + 1)
    check = end_check(file_type)
    start = 0
    for cut in sorted({c for c in cuts if c < len(data)} | {len(data)}):
        check.feed(memoryview(data)[start:cut])
        start = cut
    assert check.whole() is whole
