"""Hostile file hosts: leaking DOWNLOAD_HEADERS through redirects, endless bodies, gzip bombs."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from tests import samples
from tests.recording_server import RecordingServer, Reply
from tests.samples import key_for
from worker.download import Fetcher
from worker.errors import PermanentDownloadError
from worker.settings import DownloadSettings
from worker.sniff import FileKind
from worker.storage import LocalStorage

SECRET = "download-header-secret-value"
PNG = samples.png()
MB = 1024 * 1024


@pytest.fixture(scope="module")
def origin() -> Iterator[RecordingServer]:
    running = RecordingServer().start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[RecordingServer]:
    running = RecordingServer().start()
    yield running
    running.stop()



def fetcher(**overrides: Any) -> Fetcher:
    values: dict[str, Any] = {"allow_private_networks": True, "max_attempts": 1,
                              "timeout_seconds": 5.0, "extra_headers": {"X-Api-Key": SECRET}}
    values.update(overrides)
    return Fetcher(DownloadSettings(**values), sleep=lambda _: None)



def test_download_headers_reach_the_origin_only(origin: RecordingServer,
                                                elsewhere: RecordingServer,
                                                storage: LocalStorage) -> None:
    target = elsewhere.add("leak/target", Reply(body=PNG))
    start = origin.add("leak/start", Reply(302, {"Location": target}))
    result = fetcher().fetch(start, FileKind.ITEM_IMAGE, storage, key_for("h"))
    assert result.size == len(PNG)
    [first] = origin.received("leak/start")
    [second] = elsewhere.received("leak/target")
    assert first["x-api-key"] == SECRET
    # Same host (127.0.0.1), other port: another origin, so no header.
    assert "x-api-key" not in second
    assert SECRET not in repr(second)


def test_download_headers_follow_a_same_origin_redirect(origin: RecordingServer,
                                                        storage: LocalStorage) -> None:
    origin.add("same/target", Reply(body=PNG))
    start = origin.add("same/start", Reply(301, {"Location": "/same/target"}))
    fetcher().fetch(start, FileKind.ITEM_IMAGE, storage, key_for("s"))
    assert origin.received("same/target")[0]["x-api-key"] == SECRET


def test_download_headers_go_to_an_allowed_host(origin: RecordingServer,
                                                elsewhere: RecordingServer,
                                                storage: LocalStorage) -> None:
    target = elsewhere.add("allowed/target", Reply(body=PNG), host="localhost")
    start = origin.add("allowed/start", Reply(302, {"Location": target}))
    fetch = fetcher(allowed_hosts=("127.0.0.1", "localhost"))
    fetch.fetch(start, FileKind.ITEM_IMAGE, storage, key_for("a"))
    assert elsewhere.received("allowed/target")[0]["x-api-key"] == SECRET


def endless_png() -> Iterable[bytes]:
    yield PNG[:-12]  # a PNG that never reaches its IEND
    block = b"\0" * 65536
    for _ in range(8 * 1024):  # 512 MiB if nobody stops reading
        yield block


def test_oversized_body_is_abandoned_as_soon_as_the_limit_passes(
        origin: RecordingServer, storage: LocalStorage) -> None:
    url = origin.add("endless", Reply(headers={"Content-Type": "image/png"}, body=endless_png))
    with pytest.raises(PermanentDownloadError, match="DOWNLOAD_MAX_BYTES"):
        fetcher(max_bytes=2 * MB).fetch(url, FileKind.ITEM_IMAGE, storage, key_for("e"))
    # Socket buffers hold a few MiB at most; the other ~500 MiB were never sent.
    assert origin.sent["/endless"] < 64 * MB
    assert not [p for p in storage.root.rglob("*") if p.is_file()]


def gzip_bomb(decoded_mb: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(PNG[:-12])]
    block = b"\0" * MB
    parts.extend(compressor.compress(block) for _ in range(decoded_mb))
    parts.append(compressor.flush())
    return b"".join(parts)


def test_gzip_bomb_is_stopped_early_and_counted_decoded(origin: RecordingServer,
                                                        storage: LocalStorage) -> None:
    bomb = gzip_bomb(decoded_mb=200)
    assert len(bomb) < 1 * MB  # small on the wire: the raw size alone passes the limit
    url = origin.add("bomb", Reply(headers={"Content-Type": "image/png",
                                            "Content-Encoding": "gzip"}, body=bomb))
    tracemalloc.start()
    try:
        with pytest.raises(PermanentDownloadError, match="DOWNLOAD_MAX_BYTES"):
            fetcher(max_bytes=4 * MB).fetch(url, FileKind.ITEM_IMAGE, storage, key_for("b"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Decoding is bounded per chunk: memory stays near the chunk size, never the 200 MiB.
    assert peak < 32 * MB, f"peak {peak / MB:.0f} MiB while decoding"
    assert not [p for p in storage.root.rglob("*") if p.is_file()]


def test_a_gzip_encoded_file_is_stored_decoded(origin: RecordingServer,
                                               storage: LocalStorage) -> None:
    url = origin.add("gz", Reply(headers={"Content-Type": "image/png",
                                          "Content-Encoding": "gzip"}, body=gzip.compress(PNG)))
    result = fetcher().fetch(url, FileKind.ITEM_IMAGE, storage, key_for("g"))
    assert (storage.root / result.key).read_bytes() == PNG
