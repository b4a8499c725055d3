"""Hostile file hosts: leaking DOWNLOAD_HEADERS (through redirects, over plain http), endless
bodies, gzip bombs."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from casefetch.errors import ConfigError
from tests import samples
from tests.recording_server import RecordingServer, Reply
from tests.samples import closed_after_test, fetch_file, key_for
from tests.tls import self_signed, tls_server
from worker.download import Fetcher
from worker.errors import PermanentDownloadError
from worker.settings import DownloadSettings, WorkerSettings
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
    values: dict[str, Any] = {
        "allow_private_networks": True,
        "max_attempts": 1,
        "timeout_seconds": 5.0,
        "extra_headers": {"X-Api-Key": SECRET},
    }
    values.update(overrides)
    return closed_after_test(Fetcher(DownloadSettings(**values), sleep=lambda _: None))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"), "localhost")


@pytest.fixture(scope="module")
def secure(certificate: tuple[Path, Path]) -> Iterator[RecordingServer]:
    running = tls_server(*certificate).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def secure_elsewhere(certificate: tuple[Path, Path]) -> Iterator[RecordingServer]:
    running = tls_server(*certificate).start()
    yield running
    running.stop()


@pytest.fixture
def trusted(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))


def https(server: RecordingServer, path: str, reply: Reply) -> str:
    return server.add(path, reply, host="localhost").replace("http:", "https:", 1)


ALLOWED = ("localhost",)


@pytest.mark.usefixtures("trusted")
def test_download_headers_go_to_allowed_hosts_over_https(
    secure: RecordingServer, secure_elsewhere: RecordingServer, storage: LocalStorage
) -> None:
    target = https(secure_elsewhere, "allowed/target", Reply(body=PNG))
    start = https(secure, "allowed/start", Reply(302, {"Location": target}))
    result = fetch_file(
        fetcher(allowed_hosts=ALLOWED), start, FileKind.ITEM_IMAGE, storage, key_for("a")
    )
    assert result.size == len(PNG)
    # The host is what the allowlist names: another port of it gets the headers too.
    assert secure.received("allowed/start")[0]["x-api-key"] == SECRET
    assert secure_elsewhere.received("allowed/target")[0]["x-api-key"] == SECRET


@pytest.mark.usefixtures("trusted")
def test_download_headers_never_go_over_plain_http(
    secure: RecordingServer, origin: RecordingServer, storage: LocalStorage
) -> None:
    plain = origin.add("plain/target", Reply(body=PNG), host="localhost")
    assert plain.startswith("http://localhost:")
    fetch = fetcher(allowed_hosts=ALLOWED)
    fetch_file(fetch, plain, FileKind.ITEM_IMAGE, storage, key_for("p"))
    # ...nor to an http URL an https one redirects to: fetched, without them.
    start = https(secure, "downgrade/start", Reply(302, {"Location": plain}))
    fetch_file(fetch, start, FileKind.ITEM_IMAGE, storage, key_for("d"))
    assert secure.received("downgrade/start")[0]["x-api-key"] == SECRET
    received = origin.received("plain/target")
    assert len(received) == 2
    assert not [r for r in received if "x-api-key" in r or SECRET in repr(r)]


@pytest.mark.usefixtures("trusted")
def test_download_headers_never_reach_a_host_off_the_list(
    secure: RecordingServer, secure_elsewhere: RecordingServer, storage: LocalStorage
) -> None:
    # Same server, named by its address: not a host the allowlist names, so not fetched.
    target = secure_elsewhere.add("off/target", Reply(body=PNG)).replace("http:", "https:")
    start = https(secure, "off/start", Reply(302, {"Location": target}))
    with pytest.raises(PermanentDownloadError, match="not in DOWNLOAD_ALLOWED_HOSTS"):
        fetch_file(
            fetcher(allowed_hosts=ALLOWED), start, FileKind.ITEM_IMAGE, storage, key_for("o")
        )
    assert secure.received("off/start")[0]["x-api-key"] == SECRET
    assert secure_elsewhere.received("off/target") == []


@pytest.mark.usefixtures("trusted")
def test_without_an_allowlist_download_headers_go_nowhere(
    secure: RecordingServer, storage: LocalStorage
) -> None:
    url = https(secure, "nolist/target", Reply(body=PNG))
    fetch_file(fetcher(), url, FileKind.ITEM_IMAGE, storage, key_for("n"))
    assert "x-api-key" not in secure.received("nolist/target")[0]


def test_download_headers_without_an_allowlist_stop_the_worker() -> None:
    env = {"DOWNLOAD_HEADERS": json.dumps({"X-Api-Key": SECRET})}
    with pytest.raises(ConfigError, match=r"^DOWNLOAD_HEADERS: set DOWNLOAD_ALLOWED_HOSTS"):
        WorkerSettings.from_env(env)
    settings = WorkerSettings.from_env(
        {**env, "DOWNLOAD_ALLOWED_HOSTS": " Files.Example.com ,cdn.example.com"}
    )
    assert settings.download.allowed_hosts == ("files.example.com", "cdn.example.com")
    assert settings.download.extra_headers == {"X-Api-Key": SECRET}


def endless_png() -> Iterable[bytes]:
    yield PNG[:-12]  # a PNG that never reaches its IEND
    block = b"\0" * 65536
    for _ in range(8 * 1024):  # 512 MiB if nobody stops reading
        yield block


def test_oversized_body_is_abandoned_as_soon_as_the_limit_passes(
    origin: RecordingServer, storage: LocalStorage
) -> None:
    url = origin.add("endless", Reply(headers={"Content-Type": "image/png"}, body=endless_png))
    with pytest.raises(PermanentDownloadError, match="DOWNLOAD_MAX_BYTES"):
        fetch_file(fetcher(max_bytes=2 * MB), url, FileKind.ITEM_IMAGE, storage, key_for("e"))
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


def test_gzip_bomb_is_stopped_early_and_counted_decoded(
    origin: RecordingServer, storage: LocalStorage
) -> None:
    bomb = gzip_bomb(decoded_mb=200)
    assert len(bomb) < 1 * MB  # small on the wire: the raw size alone passes the limit
    url = origin.add(
        "bomb", Reply(headers={"Content-Type": "image/png", "Content-Encoding": "gzip"}, body=bomb)
    )
    tracemalloc.start()
    try:
        with pytest.raises(PermanentDownloadError, match="DOWNLOAD_MAX_BYTES"):
            fetch_file(fetcher(max_bytes=4 * MB), url, FileKind.ITEM_IMAGE, storage, key_for("b"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Decoding is bounded per chunk: memory stays near the chunk size, never the 200 MiB.
    assert peak < 32 * MB, f"peak {peak / MB:.0f} MiB while decoding"
    assert not [p for p in storage.root.rglob("*") if p.is_file()]


def test_a_gzip_encoded_file_is_stored_decoded(
    origin: RecordingServer, storage: LocalStorage
) -> None:
    url = origin.add(
        "gz",
        Reply(
            headers={"Content-Type": "image/png", "Content-Encoding": "gzip"},
            body=gzip.compress(PNG),
        ),
    )
    result = fetch_file(fetcher(), url, FileKind.ITEM_IMAGE, storage, key_for("g"))
    assert (storage.root / result.key).read_bytes() == PNG
