"""The fetcher against a real misbehaving HTTP server, writing to real local storage."""

from __future__ import annotations

import ctypes
import mmap
import os
import socket
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from casefetch.errors import ConfigError
from tests import samples
from tests.fileserver import Fault, FileServer
from tests.recording_server import RecordingServer, Reply
from tests.samples import closed_after_test, fetch_file, key_for
from tests.tls import self_signed, tls_server
from worker.download import Fetcher
from worker.errors import DownloadError, PermanentDownloadError
from worker.settings import DownloadSettings, WorkerSettings
from worker.sniff import FileKind
from worker.storage import LocalStorage


def fetcher(**overrides: object) -> tuple[Fetcher, list[float]]:
    slept: list[float] = []
    values: dict[str, Any] = {
        "allow_private_networks": True,
        "max_attempts": 3,
        "timeout_seconds": 2.0,
        "backoff_base_seconds": 0.01,
    }
    values.update(overrides)
    return closed_after_test(Fetcher(DownloadSettings(**values), sleep=slept.append)), slept


def test_streams_hashes_and_stores(file_server: FileServer, storage: LocalStorage) -> None:
    data = samples.jpeg(3 * 1024 * 1024)
    url = file_server.add("dl/big", data, chunked=True)
    result = fetch_file(fetcher()[0], url, FileKind.ITEM_IMAGE, storage, key_for("x/big"))
    assert result.key == "x/big.jpg" and result.size == len(data) and result.attempts == 1
    assert (storage.root / "x/big.jpg").read_bytes() == data


def resident_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache now (mincore on a mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with path.open("rb") as handle:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, handle.fileno(), 0)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vector = ctypes.create_string_buffer(pages)
            assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
            return sum(byte & 1 for byte in vector.raw)
        finally:
            libc.munmap(address, size)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore, page cache: Linux")
def test_a_downloaded_file_leaves_no_page_cache_behind(
    file_server: FileServer, storage: LocalStorage
) -> None:
    # A file the worker writes for itself (manifest, case.json) stays cached: it is read
    # again. That it shows as resident is also what tells this test it can see the cache.
    data = samples.jpeg(2 * 1024 * 1024)
    storage.write_bytes("x/kept.jpg", data)
    cached = resident_pages(storage.root / "x/kept.jpg")
    if cached == 0:
        pytest.skip("this file system keeps no page cache for a file just written")
    url = file_server.add("dl/nocache", data)
    fetch_file(fetcher()[0], url, FileKind.ITEM_IMAGE, storage, key_for("x/fetched"))
    stored = storage.root / "x/fetched.jpg"
    assert cached > len(data) // mmap.PAGESIZE // 2
    assert resident_pages(stored) == 0
    assert stored.read_bytes() == data  # on disk, whole


def test_retry_after_is_honoured(file_server: FileServer, storage: LocalStorage) -> None:
    url = file_server.add(
        "dl/429",
        samples.pdf(),
        faults=[
            Fault(status=429, headers={"Retry-After": "0.2"}),
            Fault(status=429, headers={"Retry-After": "0"}),
        ],
    )
    fetch, slept = fetcher(backoff_max_seconds=5)
    result = fetch_file(fetch, url, FileKind.CASE_PDF, storage, key_for("r"))
    assert result.attempts == 3
    assert len(slept) == 2


@pytest.mark.parametrize(
    "fault", [Fault(truncate=1000), Fault(lie_length=10**6)], ids=["cut-short", "length-lies"]
)
def test_short_bodies_are_retried_and_never_stored(
    file_server: FileServer, storage: LocalStorage, fault: Fault
) -> None:
    url = file_server.add(f"dl/short-{fault.truncate}", samples.pdf(20_000), always=fault)
    with pytest.raises(DownloadError) as info:
        fetch_file(fetcher()[0], url, FileKind.CASE_PDF, storage, key_for("s"))
    assert getattr(info.value, "attempts", 0) == 3
    assert not list(storage.root.rglob("*.pdf"))
    assert not list((storage.root / ".tmp").glob("*"))


def test_chunked_body_cut_short_is_not_stored(
    file_server: FileServer, storage: LocalStorage
) -> None:
    url = file_server.add(
        "dl/chunk-cut", samples.pdf(300_000), chunked=True, always=Fault(truncate=150_000)
    )
    with pytest.raises(DownloadError):
        fetch_file(fetcher()[0], url, FileKind.CASE_PDF, storage, key_for("c"))
    assert not list(storage.root.rglob("*.pdf"))


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_the_transfer_says_a_body_is_whole_not_the_format(
    file_server: FileServer, storage: LocalStorage, framing: str
) -> None:
    # Whole by its Content-Length or its chunks: stored as served, whatever its last bytes.
    data = samples.pdf()[:-20]
    url = file_server.add(f"dl/no-eof-{framing}", data, chunked=framing == "chunked")
    result = fetch_file(fetcher()[0], url, FileKind.CASE_PDF, storage, key_for("n"))
    assert result.attempts == 1 and (storage.root / "n.pdf").read_bytes() == data


@pytest.mark.parametrize(
    "name,data,kind,extension",
    [
        ("motion-photo", samples.motion_photo(), FileKind.ITEM_IMAGE, "jpg"),
        ("camera-trailer", samples.camera_trailer(), FileKind.ITEM_IMAGE, "jpg"),
        ("png-after-iend", samples.png() + b"\x00trailing data", FileKind.ITEM_IMAGE, "png"),
        ("pdf-after-eof", samples.pdf() + b"\r\n\x00\x00junk", FileKind.CASE_PDF, "pdf"),
    ],
)
@pytest.mark.parametrize("framing", ["length", "chunked", "unframed"])
def test_bytes_after_a_formats_end_are_stored(
    file_server: FileServer,
    storage: LocalStorage,
    name: str,
    data: bytes,
    kind: FileKind,
    extension: str,
    framing: str,
) -> None:
    url = file_server.add(
        f"dl/after-end/{name}-{framing}",
        data,
        chunked=framing == "chunked",
        unframed=framing == "unframed",
    )
    result = fetch_file(fetcher()[0], url, kind, storage, key_for(f"t/{name}-{framing}"))
    stored = storage.root / result.key
    assert result.key.endswith(f".{extension}") and result.attempts == 1
    assert result.warning is None
    assert result.sha256 == samples.sha(data) and stored.read_bytes() == data


@pytest.mark.parametrize(
    "name,data,cut",
    [
        ("pdf", samples.pdf(20_000), 15_000),
        ("jpeg-in-its-thumbnail", samples.real_jpeg(thumbnail=True), 330),
        ("png", samples.png(64, 64), 100),
        ("mp4", samples.mp4(), 1500),
    ],
)
def test_an_unframed_body_cut_before_its_formats_end_is_retried_and_not_stored(
    file_server: FileServer, storage: LocalStorage, name: str, data: bytes, cut: int
) -> None:
    # No length, no chunks: the connection's close ends the body, and only the format can
    # tell a cut one (the JPEG is cut after its EXIF thumbnail's own end marker).
    url = file_server.add(
        f"dl/unframed-cut/{name}", data, unframed=True, always=Fault(truncate=cut)
    )
    with pytest.raises(DownloadError, match="cut short") as info:
        fetch_file(
            fetcher()[0],
            url,
            FileKind.ITEM_IMAGE if name != "pdf" else FileKind.CASE_PDF,
            storage,
            key_for(f"u/{name}"),
        )
    assert getattr(info.value, "attempts", 0) == 3
    assert not [p for p in storage.root.rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    "data,kind",
    [
        (samples.png(), FileKind.CASE_PDF),
        (samples.heic(), FileKind.CASE_PDF),
        (b"<html></html>", FileKind.ITEM_IMAGE),
        (b'{"error": "expired"}', FileKind.ITEM_IMAGE),
        (b"Access denied\n", FileKind.ITEM_IMAGE),
        (b"<!DOCTYPE html><title>Login</title>", FileKind.CASE_PDF),
    ],
)
def test_wrong_content_fails_at_once(
    file_server: FileServer, storage: LocalStorage, data: bytes, kind: FileKind
) -> None:
    url = file_server.add(f"dl/wrong-{kind.value}-{samples.sha(data)[:8]}", data)
    with pytest.raises(PermanentDownloadError, match="expected") as info:
        fetch_file(fetcher()[0], url, kind, storage, key_for("w"))
    assert getattr(info.value, "attempts", 0) == 1
    assert not [p for p in storage.root.rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    "name,data,step,extension,warned",
    [
        ("heic", samples.heic(), "PHOTOGRAPHY", "heic", True),
        ("avif", samples.avif(), "PHOTOGRAPHY", "avif", True),
        ("mp4-photo", samples.mp4(), "PHOTOGRAPHY", "mp4", True),
        ("mov-photo", samples.quicktime(), "SIGNATURE", "mov", True),
        ("pdf-photo", samples.pdf(), "PHOTOGRAPHY", "pdf", True),
        ("gif", b"GIF89a" + bytes(64), "PHOTOGRAPHY", "gif", True),
        ("tiff", b"II*\x00\x08\x00\x00\x00" + bytes(64), "PHOTOGRAPHY", "tif", True),
        ("mp4-video", samples.mp4(), "VIDEO", "mp4", False),
        ("mov-video", samples.quicktime(), "VIDEO", "mov", False),
        ("jpeg-video", samples.real_jpeg(), "VIDEO", "jpg", False),
        ("heic-video", samples.heic(), "VIDEO", "heic", True),
    ],
)
def test_recognised_media_of_another_type_are_kept_with_a_warning(
    file_server: FileServer,
    storage: LocalStorage,
    name: str,
    data: bytes,
    step: str,
    extension: str,
    warned: bool,
) -> None:
    url = file_server.add(f"dl/media/{name}", data)
    result = fetch_file(
        fetcher()[0], url, FileKind.ITEM_IMAGE, storage, key_for(f"m/{name}"), step_action=step
    )
    assert result.key == f"m/{name}.{extension}"
    assert (storage.root / result.key).read_bytes() == data
    assert result.sha256 == samples.sha(data)
    if warned:
        assert result.warning is not None and f"stored as .{extension}" in result.warning
    else:
        assert result.warning is None


@pytest.mark.parametrize(
    "header", [{"Content-Length": "\u00b2"}, {"Content-Length": "12, 13"}, {"Content-Length": "-1"}]
)
def test_a_content_length_that_is_not_a_length_is_a_retried_protocol_error(
    file_server: FileServer, storage: LocalStorage, header: dict[str, str]
) -> None:
    data = samples.png(seed=9)
    url = file_server.add(
        f"dl/bad-length-{samples.sha(repr(header).encode())[:8]}",
        data,
        faults=[Fault(headers=header)],
    )
    result = fetch_file(fetcher()[0], url, FileKind.ITEM_IMAGE, storage, key_for("l"))
    assert result.attempts == 2 and (storage.root / result.key).read_bytes() == data

    always = file_server.add(
        f"dl/always-bad-length-{samples.sha(repr(header).encode())[:8]}",
        data,
        always=Fault(headers=header),
    )
    with pytest.raises(DownloadError, match="protocol error: Content-Length") as info:
        fetch_file(fetcher()[0], always, FileKind.ITEM_IMAGE, storage, key_for("l2"))
    assert getattr(info.value, "attempts", 0) == 3


def test_a_retry_after_that_is_not_a_number_is_ignored(
    file_server: FileServer, storage: LocalStorage
) -> None:
    url = file_server.add(
        "dl/retry-after-sup",
        samples.png(),
        faults=[
            Fault(status=503, headers={"Retry-After": "\u00b9"}),
            # Arabic-Indic digits as a host sends them, in UTF-8 (the test server writes
            # Latin-1); http.client reads those bytes back as Latin-1, not as digits.
            Fault(status=429, headers={"Retry-After": "\u0661\u0662".encode().decode("latin-1")}),
        ],
    )
    fetch, slept = fetcher(backoff_base_seconds=0.001, backoff_max_seconds=5)
    result = fetch_file(fetch, url, FileKind.ITEM_IMAGE, storage, key_for("ra"))
    assert result.attempts == 3
    # Ignored: the backoff alone (at most 2 ms here), not the 1 or 12 seconds they would say.
    assert len(slept) == 2 and max(slept) <= 0.002


def test_a_non_ascii_url_is_requested_as_a_browser_would(storage: LocalStorage) -> None:
    pdf = samples.pdf()
    server = RecordingServer().start()
    resolved: list[str] = []

    def resolve(host: str, port: int, **kwargs: object) -> list[tuple[object, ...]]:
        # The IDN host is looked up, and named in Host, in its IDNA form only.
        resolved.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    try:
        server.add("/rapport-%C3%A9t%C3%A9.pdf", Reply(body=pdf))
        url = f"http://bücher.test:{server.port}/rapport-été.pdf?nom=Ça va#page=2"
        settings = DownloadSettings(allow_private_networks=True, max_attempts=1)
        fetch = closed_after_test(Fetcher(settings, resolve=resolve))
        result = fetch_file(fetch, url, FileKind.CASE_PDF, storage, key_for("idn"))
        [request] = server.received("/rapport-%C3%A9t%C3%A9.pdf")
    finally:
        server.stop()
    assert (storage.root / result.key).read_bytes() == pdf
    assert resolved == ["xn--bcher-kva.test"]
    assert request["host"] == f"xn--bcher-kva.test:{server.port}"
    assert request[":target"] == "/rapport-%C3%A9t%C3%A9.pdf?nom=%C3%87a%20va"


def test_an_internationalised_host_can_be_allowed(storage: LocalStorage) -> None:
    server = RecordingServer().start()

    def resolve(host: str, port: int, **kwargs: object) -> list[tuple[object, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    env = {
        "DOWNLOAD_ALLOWED_HOSTS": " Bücher.test ",
        "DOWNLOAD_ALLOW_PRIVATE_NETWORKS": "true",
        "DOWNLOAD_MAX_ATTEMPTS": "1",
    }
    settings = WorkerSettings.from_env(env).download
    assert settings.allowed_hosts == ("xn--bcher-kva.test",)
    try:
        server.add("/photo.png", Reply(body=samples.png()))
        fetch = closed_after_test(Fetcher(settings, resolve=resolve))
        url = f"http://BÜCHER.test:{server.port}/photo.png"
        assert fetch_file(fetch, url, FileKind.ITEM_IMAGE, storage, key_for("a")).attempts == 1
        with pytest.raises(PermanentDownloadError, match="not in DOWNLOAD_ALLOWED_HOSTS"):
            fetch_file(
                fetch,
                f"http://bucher.test:{server.port}/photo.png",
                FileKind.ITEM_IMAGE,
                storage,
                key_for("b"),
            )
    finally:
        server.stop()
    with pytest.raises(ConfigError, match=r"^DOWNLOAD_ALLOWED_HOSTS: 'a b' is not a host name"):
        WorkerSettings.from_env({"DOWNLOAD_ALLOWED_HOSTS": "files.example.com,a b"})


@pytest.mark.parametrize(
    "url",
    [
        "http://exa mple.test/a.pdf",
        "http://[::1/a.pdf",
        "http://host:99999/a.pdf",
        "http://a<b.test/a.pdf",
        "http://\u00ad.test/a.pdf",
    ],
)
def test_a_url_that_cannot_become_a_request_fails_at_once(storage: LocalStorage, url: str) -> None:
    with pytest.raises(PermanentDownloadError, match="invalid URL") as info:
        fetch_file(fetcher()[0], url, FileKind.CASE_PDF, storage, key_for("bad"))
    assert getattr(info.value, "attempts", 0) == 1


def test_over_the_size_limit_is_refused(file_server: FileServer, storage: LocalStorage) -> None:
    declared = file_server.add("dl/declared", samples.pdf(100_000))
    with pytest.raises(PermanentDownloadError, match="DOWNLOAD_MAX_BYTES"):
        fetch_file(fetcher(max_bytes=50_000)[0], declared, FileKind.CASE_PDF, storage, key_for("a"))
    undeclared = file_server.add("dl/undeclared", samples.pdf(100_000), chunked=True)
    with pytest.raises(PermanentDownloadError, match="DOWNLOAD_MAX_BYTES"):
        fetch_file(
            fetcher(max_bytes=50_000)[0], undeclared, FileKind.CASE_PDF, storage, key_for("b")
        )
    assert not list(storage.root.rglob("*.pdf"))


def test_redirects_are_followed(file_server: FileServer, storage: LocalStorage) -> None:
    target = file_server.add("dl/target", samples.png())
    url = file_server.add("dl/moved", b"", redirect_to=target)
    assert fetch_file(fetcher()[0], url, FileKind.ITEM_IMAGE, storage, key_for("m")).key == "m.png"


def test_private_addresses_are_refused_by_default(
    file_server: FileServer, storage: LocalStorage
) -> None:
    url = file_server.add("dl/private", samples.png())
    with pytest.raises(PermanentDownloadError, match="non-public"):
        fetch_file(
            fetcher(allow_private_networks=False)[0],
            url,
            FileKind.ITEM_IMAGE,
            storage,
            key_for("p"),
        )
    assert file_server.hits["/dl/private"] == 0


def test_https_is_verified(
    tmp_path: Path, storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path, "localhost")
    server = tls_server(cert, key).start()
    try:
        png = samples.png()
        url = server.add("tls/1", Reply(body=png), host="localhost").replace("http:", "https:")
        hop = server.add("tls/hop", Reply(302, {"Location": "/tls/1"}), host="localhost").replace(
            "http:", "https:"
        )
        fetch = fetcher(max_attempts=1)[0]
        # Not trusted: refused, and said why.
        with pytest.raises(DownloadError, match="certificate verify failed"):
            fetch_file(fetch, url, FileKind.ITEM_IMAGE, storage, key_for("t0"))
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted from now on
        assert fetch_file(fetch, url, FileKind.ITEM_IMAGE, storage, key_for("t1")).size == len(png)
        assert fetch_file(fetch, hop, FileKind.ITEM_IMAGE, storage, key_for("t2")).size == len(png)
        # The certificate names localhost: an address is not that name.
        by_address = url.replace("localhost", "127.0.0.1")
        with pytest.raises(DownloadError, match="certificate verify failed"):
            fetch_file(fetch, by_address, FileKind.ITEM_IMAGE, storage, key_for("t3"))
    finally:
        server.stop()


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
def test_a_deflate_encoded_file_is_stored_decoded(storage: LocalStorage, wbits: int) -> None:
    # "deflate" means zlib-wrapped; some servers send it raw. Both are what the file is.
    png = samples.png(64, 64)
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    body = compressor.compress(png) + compressor.flush()
    server = RecordingServer().start()
    try:
        url = server.add("deflated", Reply(headers={"Content-Encoding": "deflate"}, body=body))
        result = fetch_file(fetcher()[0], url, FileKind.ITEM_IMAGE, storage, key_for("d"))
    finally:
        server.stop()
    assert (storage.root / result.key).read_bytes() == png


def test_an_unknown_or_false_encoding_is_refused_and_not_stored(storage: LocalStorage) -> None:
    server = RecordingServer().start()
    try:
        brotli = server.add("br", Reply(headers={"Content-Encoding": "br"}, body=samples.png()))
        liar = server.add("liar", Reply(headers={"Content-Encoding": "gzip"}, body=samples.png()))
        with pytest.raises(PermanentDownloadError, match="unsupported Content-Encoding 'br'"):
            fetch_file(fetcher()[0], brotli, FileKind.ITEM_IMAGE, storage, key_for("b"))
        with pytest.raises(DownloadError, match=r"could not be decoded \(gzip\)") as info:
            fetch_file(fetcher()[0], liar, FileKind.ITEM_IMAGE, storage, key_for("l"))
    finally:
        server.stop()
    assert info.value.attempts == 3  # type: ignore[attr-defined]  # retried: it may pass
    assert not [p for p in storage.root.rglob("*") if p.is_file()]


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_a_trickling_host_is_cut_off_at_the_attempt_deadline(
    file_server: FileServer, storage: LocalStorage, chunked: bool
) -> None:
    import time

    # 200 bytes every 0.1 s: never a gap of DOWNLOAD_TIMEOUT_SECONDS, 10 s for the file.
    data = samples.pdf(20_000)
    url = file_server.add(f"dl/trickle-{chunked}", data, trickle=(1000, 200, 0.1), chunked=chunked)
    fetch, slept = fetcher(attempt_timeout_seconds=0.6, max_attempts=2)
    started = time.monotonic()
    with pytest.raises(DownloadError, match="DOWNLOAD_ATTEMPT_TIMEOUT_SECONDS") as caught:
        fetch_file(fetch, url, FileKind.CASE_PDF, storage, key_for(f"x/trickle-{chunked}"))
    assert caught.value.attempts == 2  # type: ignore[attr-defined]
    assert time.monotonic() - started < 2 * 0.6 + sum(slept) + 0.5
    assert list(storage.list("")) == []  # nothing left, not even a temporary file
    # The same fetcher then fetches a file that comes in time, on a fresh connection.
    quick = file_server.add("dl/after-trickle", samples.pdf())
    assert fetch_file(fetch, quick, FileKind.CASE_PDF, storage, key_for("x/quick")).attempts == 1


def test_the_deadline_thread_cuts_only_what_overruns_and_keeps_nothing_after() -> None:
    import threading
    import time

    from worker.deadline import Watchdog

    dog = Watchdog()
    cut = threading.Event()
    for _ in range(1000):  # tries that end in time: never cut, never kept
        with dog.watch(time.monotonic() + 60, cut.set) as watch:
            pass
    assert not watch.expired and not cut.is_set() and dog._watches == {}
    with dog.watch(time.monotonic() + 0.05, cut.set) as late:
        assert cut.wait(5)
    assert late.expired and dog._watches == {}
