"""The fetcher against a real misbehaving HTTP server, writing to real local storage."""

from __future__ import annotations

import pytest

from tests import samples
from tests.fileserver import Fault, FileServer
from tests.samples import key_for
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
