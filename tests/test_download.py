"""The fetcher against a real misbehaving HTTP server, writing to real local storage."""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import zlib
from pathlib import Path

import pytest

from tests import samples
from tests.fileserver import Fault, FileServer
from tests.recording_server import RecordingServer, Reply
from tests.samples import key_for
from tests.tls import self_signed, tls_server
from worker.download import Fetcher, _retry_after
from worker.errors import DownloadError, PermanentDownloadError
from worker.settings import DownloadSettings
from worker.sniff import FileKind
from worker.storage import LocalStorage


def fetcher(**overrides: object) -> tuple[Fetcher, list[float]]:
    slept: list[float] = []
    values: dict[str, object] = {"allow_private_networks": True, "max_attempts": 3,
                                 "timeout_seconds": 2.0, "backoff_base_seconds": 0.01}
    values.update(overrides)
    return Fetcher(DownloadSettings(**values), sleep=slept.append), slept  # type: ignore[arg-type]



def test_streams_hashes_and_stores(file_server: FileServer, storage: LocalStorage) -> None:
    data = samples.jpeg(3 * 1024 * 1024)
    url = file_server.add("dl/big", data, chunked=True)
    result = fetcher()[0].fetch(url, FileKind.ITEM_IMAGE, storage, key_for("x/big"))
    assert result.key == "x/big.jpg" and result.size == len(data) and result.attempts == 1
    assert (storage.root / "x/big.jpg").read_bytes() == data


def resident_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache now (mincore on a mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
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
def test_a_downloaded_file_leaves_no_page_cache_behind(file_server: FileServer,
                                                       storage: LocalStorage) -> None:
    # A file the worker writes for itself (manifest, case.json) stays cached: it is read
    # again. That it shows as resident is also what tells this test it can see the cache.
    data = samples.jpeg(2 * 1024 * 1024)
    storage.write_bytes("x/kept.jpg", data)
    cached = resident_pages(storage.root / "x/kept.jpg")
    if cached == 0:
        pytest.skip("this file system keeps no page cache for a file just written")
    url = file_server.add("dl/nocache", data)
    fetcher()[0].fetch(url, FileKind.ITEM_IMAGE, storage, key_for("x/fetched"))
    stored = storage.root / "x/fetched.jpg"
    assert cached > len(data) // mmap.PAGESIZE // 2
    assert resident_pages(stored) == 0
    assert stored.read_bytes() == data  # on disk, whole


def test_retry_after_is_honoured(file_server: FileServer, storage: LocalStorage) -> None:
    url = file_server.add("dl/429", samples.pdf(),
                          faults=[Fault(status=429, headers={"Retry-After": "0.2"}),
                                  Fault(status=429, headers={"Retry-After": "0"})])
    fetch, slept = fetcher(backoff_max_seconds=5)
    result = fetch.fetch(url, FileKind.CASE_PDF, storage, key_for("r"))
    assert result.attempts == 3
    assert len(slept) == 2


def test_retry_after_parsing() -> None:
    assert _retry_after("7") == 7.0
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert _retry_after("soon") is None


@pytest.mark.parametrize("fault", [Fault(truncate=1000), Fault(lie_length=10**6)],
                         ids=["cut-short", "length-lies"])
def test_short_bodies_are_retried_and_never_stored(file_server: FileServer,
                                                   storage: LocalStorage, fault: Fault) -> None:
    url = file_server.add(f"dl/short-{fault.truncate}", samples.pdf(20_000), always=fault)
    with pytest.raises(DownloadError) as info:
        fetcher()[0].fetch(url, FileKind.CASE_PDF, storage, key_for("s"))
    assert getattr(info.value, "attempts", 0) == 3
    assert not list(storage.root.rglob("*.pdf"))
    assert not list((storage.root / ".tmp").glob("*"))


def test_chunked_body_cut_short_is_not_stored(file_server: FileServer,
                                              storage: LocalStorage) -> None:
    url = file_server.add("dl/chunk-cut", samples.pdf(300_000), chunked=True,
                          always=Fault(truncate=150_000))
    with pytest.raises(DownloadError):
        fetcher()[0].fetch(url, FileKind.CASE_PDF, storage, key_for("c"))
    assert not list(storage.root.rglob("*.pdf"))


def test_a_pdf_without_its_end_is_refused(file_server: FileServer, storage: LocalStorage) -> None:
    url = file_server.add("dl/no-eof", samples.pdf()[:-20])  # honest length, cut content
    with pytest.raises(DownloadError, match="cut short"):
        fetcher()[0].fetch(url, FileKind.CASE_PDF, storage, key_for("n"))


@pytest.mark.parametrize("data,kind", [(samples.png(), FileKind.CASE_PDF),
                                       (samples.pdf(), FileKind.ITEM_IMAGE),
                                       (b"<html></html>", FileKind.ITEM_IMAGE)])
def test_wrong_content_fails_at_once(file_server: FileServer, storage: LocalStorage,
                                     data: bytes, kind: FileKind) -> None:
    url = file_server.add(f"dl/wrong-{kind.value}-{len(data)}", data)
    with pytest.raises(PermanentDownloadError) as info:
        fetcher()[0].fetch(url, kind, storage, key_for("w"))
    assert getattr(info.value, "attempts", 0) == 1


def test_over_the_size_limit_is_refused(file_server: FileServer, storage: LocalStorage) -> None:
    declared = file_server.add("dl/declared", samples.pdf(100_000))
    with pytest.raises(PermanentDownloadError, match="DOWNLOAD_MAX_BYTES"):
        fetcher(max_bytes=50_000)[0].fetch(declared, FileKind.CASE_PDF, storage, key_for("a"))
    undeclared = file_server.add("dl/undeclared", samples.pdf(100_000), chunked=True)
    with pytest.raises(PermanentDownloadError, match="DOWNLOAD_MAX_BYTES"):
        fetcher(max_bytes=50_000)[0].fetch(undeclared, FileKind.CASE_PDF, storage, key_for("b"))
    assert not list(storage.root.rglob("*.pdf"))


def test_redirects_are_followed(file_server: FileServer, storage: LocalStorage) -> None:
    target = file_server.add("dl/target", samples.png())
    url = file_server.add("dl/moved", b"", redirect_to=target)
    assert fetcher()[0].fetch(url, FileKind.ITEM_IMAGE, storage, key_for("m")).key == "m.png"


def test_private_addresses_are_refused_by_default(file_server: FileServer,
                                                  storage: LocalStorage) -> None:
    url = file_server.add("dl/private", samples.png())
    with pytest.raises(PermanentDownloadError, match="non-public"):
        fetcher(allow_private_networks=False)[0].fetch(url, FileKind.ITEM_IMAGE, storage,
                                                       key_for("p"))
    assert file_server.hits["/dl/private"] == 0


def test_https_is_verified(tmp_path: Path, storage: LocalStorage,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path, "localhost")
    server = tls_server(cert, key).start()
    try:
        png = samples.png()
        url = server.add("tls/1", Reply(body=png), host="localhost").replace("http:", "https:")
        hop = server.add("tls/hop", Reply(302, {"Location": "/tls/1"}),
                         host="localhost").replace("http:", "https:")
        fetch = fetcher(max_attempts=1)[0]
        # Not trusted: refused, and said why.
        with pytest.raises(DownloadError, match="certificate verify failed"):
            fetch.fetch(url, FileKind.ITEM_IMAGE, storage, key_for("t0"))
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted from now on
        assert fetch.fetch(url, FileKind.ITEM_IMAGE, storage, key_for("t1")).size == len(png)
        assert fetch.fetch(hop, FileKind.ITEM_IMAGE, storage, key_for("t2")).size == len(png)
        # The certificate names localhost: an address is not that name.
        by_address = url.replace("localhost", "127.0.0.1")
        with pytest.raises(DownloadError, match="certificate verify failed"):
            fetch.fetch(by_address, FileKind.ITEM_IMAGE, storage, key_for("t3"))
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
        result = fetcher()[0].fetch(url, FileKind.ITEM_IMAGE, storage, key_for("d"))
    finally:
        server.stop()
    assert (storage.root / result.key).read_bytes() == png


def test_an_unknown_or_false_encoding_is_refused_and_not_stored(storage: LocalStorage) -> None:
    server = RecordingServer().start()
    try:
        brotli = server.add("br", Reply(headers={"Content-Encoding": "br"}, body=samples.png()))
        liar = server.add("liar", Reply(headers={"Content-Encoding": "gzip"}, body=samples.png()))
        with pytest.raises(PermanentDownloadError, match="unsupported Content-Encoding 'br'"):
            fetcher()[0].fetch(brotli, FileKind.ITEM_IMAGE, storage, key_for("b"))
        with pytest.raises(DownloadError, match=r"could not be decoded \(gzip\)") as info:
            fetcher()[0].fetch(liar, FileKind.ITEM_IMAGE, storage, key_for("l"))
    finally:
        server.stop()
    assert info.value.attempts == 3  # type: ignore[attr-defined]  # retried: it may pass
    assert not [p for p in storage.root.rglob("*") if p.is_file()]
