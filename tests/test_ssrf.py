"""SSRF: what the workers refuse to fetch, against real local servers and real sockets.

Every server here listens on 127.0.0.1, so with DOWNLOAD_ALLOW_PRIVATE_NETWORKS off each one is
a forbidden target: the tests assert the refusal *and* that the server never saw a request.
Where a hop must be allowed so the next one can be refused, the test hands the fetcher an
address check that treats one name as public; the refusal under test is the real one.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3

from tests import samples
from tests.recording_server import RecordingServer, Reply
from tests.samples import closed_after_test, fetch_file, key_for
from worker.download import Fetcher
from worker.errors import DownloadError, PermanentDownloadError
from worker.guard import (
    BlockedAddress,
    IPAddress,
    UrlGuard,
    is_public,
    refuse_non_public,
)
from worker.settings import DownloadSettings, WorkerSettings
from worker.sniff import FileKind
from worker.storage import LocalStorage

PNG = samples.png()


@pytest.fixture(scope="module")
def server() -> Iterator[RecordingServer]:
    running = RecordingServer().start()
    yield running
    running.stop()


def settings(**overrides: Any) -> DownloadSettings:
    values: dict[str, Any] = {"max_attempts": 1, "timeout_seconds": 2.0}
    values.update(overrides)
    return DownloadSettings(**values)


def localhost_is_public(host: str, address: IPAddress) -> None:
    """Plays the part of a public file host: the name ``localhost`` passes, nothing else."""
    if host != "localhost":
        refuse_non_public(host, address)


def fetch(url: str, storage: LocalStorage, check: Any = None, **overrides: Any) -> Any:
    download = settings(**overrides)
    return fetch_file(
        closed_after_test(Fetcher(download, check=check, sleep=lambda _: None)),
        url,
        FileKind.ITEM_IMAGE,
        storage,
        key_for("x"),
    )


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",
        "64:ff9b::7f00:1",
        "2001:db8::1",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "2a00:1450:4001:80b::200e"]
)
def test_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://files.example.com/a.png",
        "gopher://127.0.0.1:70/_x",
        "data:image/png;base64,AAAA",
        "javascript:alert(1)",
        "dict://127.0.0.1:6379/info",
        "//files.example.com/a.png",
        "http:///a.png",
    ],
)
def test_only_http_and_https_are_fetched(url: str, storage: LocalStorage) -> None:
    with pytest.raises(PermanentDownloadError) as info:
        fetch(url, storage, allow_private_networks=True)
    assert getattr(info.value, "attempts", 0) == 1


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[0:0:0:0:0:ffff:7f00:1]",
        "0.0.0.0",
    ],
)
def test_literal_private_addresses_are_refused_unrequested(
    host: str, server: RecordingServer, storage: LocalStorage
) -> None:
    path = f"literal-{len(server.replies)}"
    url = server.add(path, Reply(body=PNG), host=host)
    with pytest.raises(BlockedAddress, match="non-public"):
        fetch(url, storage)
    assert server.received(path) == []


@pytest.mark.parametrize("host", ["localhost", "127.1", "2130706433", "0x7f000001"])
def test_names_resolving_to_loopback_are_refused_at_connect(
    host: str, server: RecordingServer, storage: LocalStorage
) -> None:
    path = f"name-{len(server.replies)}"
    url = server.add(path, Reply(body=PNG), host=host)
    assert UrlGuard(settings()).check(url)  # not an address literal: only connecting tells
    with pytest.raises(BlockedAddress, match="non-public"):
        fetch(url, storage)
    assert server.received(path) == []


def test_metadata_address_is_refused(storage: LocalStorage) -> None:
    with pytest.raises(BlockedAddress, match=r"169\.254\.169\.254"):
        fetch("http://169.254.169.254/latest/meta-data/", storage)


def test_redirect_to_loopback_is_refused(server: RecordingServer, storage: LocalStorage) -> None:
    target = server.add("redirect/target", Reply(body=PNG))
    start = server.add("redirect/start", Reply(302, {"Location": target}), host="localhost")
    with pytest.raises(BlockedAddress, match="non-public"):
        fetch(start, storage, check=localhost_is_public)
    assert len(server.received("redirect/start")) == 1
    assert server.received("redirect/target") == []


def test_redirect_to_a_name_resolving_to_loopback_is_refused(
    server: RecordingServer, storage: LocalStorage
) -> None:
    target = server.add("redirect/by-name", Reply(body=PNG), host="127.1")
    start = server.add("redirect/start-name", Reply(301, {"Location": target}), host="localhost")
    with pytest.raises(BlockedAddress, match="non-public"):
        fetch(start, storage, check=localhost_is_public)
    assert server.received("redirect/by-name") == []


def test_allowed_redirect_is_followed_when_private_networks_are_allowed(
    server: RecordingServer, storage: LocalStorage
) -> None:
    target = server.add("redirect/ok", Reply(body=PNG))
    start = server.add("redirect/ok-start", Reply(307, {"Location": "/redirect/ok"}))
    assert fetch(start, storage, allow_private_networks=True).size == len(PNG)
    assert len(server.received("redirect/ok")) == 1
    assert target


def test_the_address_checked_is_the_address_connected_to(
    server: RecordingServer, storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: a first answer passes the check, a later one points at 127.0.0.1.

    The name is resolved once, by the connection itself, so the later answer is never asked
    for. (The fake resolver stands in for a hostile DNS server; the public answer is never
    connected to: the test's check stops there, so nothing leaves the machine.)
    """
    real_getaddrinfo = socket.getaddrinfo
    answers = iter(["93.184.215.14"] + ["127.0.0.1"] * 10)
    lookups: list[str] = []

    def rebinding_dns(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            address = next(answers)
            lookups.append(address)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_dns)
    checked: list[str] = []

    def check_and_stop_before_leaving(host: str, address: IPAddress) -> None:
        refuse_non_public(host, address)
        checked.append(str(address))
        raise BlockedAddress("test: stop before connecting out of this machine")

    url = server.add("rebind", Reply(body=PNG), host="rebind.test")
    with pytest.raises(BlockedAddress, match="stop before"):
        fetch(url, storage, check=check_and_stop_before_leaving)
    assert lookups == ["93.184.215.14"] and checked == lookups
    assert server.received("rebind") == []


def test_allowed_hosts_restrict_further(server: RecordingServer, storage: LocalStorage) -> None:
    ok = server.add("allow/ok", Reply(body=PNG), host="localhost")
    other = server.add("allow/other", Reply(body=PNG))
    hop = server.add("allow/hop", Reply(302, {"Location": other}), host="localhost")
    allow = {"allow_private_networks": True, "allowed_hosts": ("localhost",)}
    assert fetch(ok, storage, **allow).size == len(PNG)
    with pytest.raises(PermanentDownloadError, match="DOWNLOAD_ALLOWED_HOSTS"):
        fetch(other, storage, **allow)
    with pytest.raises(PermanentDownloadError, match="DOWNLOAD_ALLOWED_HOSTS"):
        fetch(hop, storage, **allow)
    assert server.received("allow/other") == []


def test_private_networks_setting_loosens_only_the_address_check(
    server: RecordingServer, storage: LocalStorage
) -> None:
    url = server.add("loosened", Reply(body=PNG), host="localhost")
    assert fetch(url, storage, allow_private_networks=True).size == len(PNG)
    with pytest.raises(PermanentDownloadError, match="scheme"):
        fetch("file:///etc/passwd", storage, allow_private_networks=True)


def test_private_hosts_may_resolve_to_private_addresses(
    server: RecordingServer, storage: LocalStorage
) -> None:
    """DOWNLOAD_PRIVATE_HOSTS (the demo's file host): the names listed may be private, no
    other host may, whatever it is called."""
    named = server.add("private/named", Reply(body=PNG), host="localhost")
    by_address = server.add("private/address", Reply(body=PNG))
    hop = server.add("private/hop", Reply(302, {"Location": by_address}), host="localhost")
    assert fetch(named, storage, private_hosts=("localhost",)).size == len(PNG)
    for refused in (by_address, hop):
        with pytest.raises(BlockedAddress, match="non-public"):
            fetch(refused, storage, private_hosts=("localhost",))
    assert server.received("private/address") == []
    with pytest.raises(BlockedAddress, match="localhost resolves to a non-public address"):
        fetch(named, storage, private_hosts=("demo",))
    assert len(server.received("private/named")) == 1


def test_private_hosts_are_read_as_written() -> None:
    env = {"DOWNLOAD_PRIVATE_HOSTS": " Demo , files.local,"}
    download = WorkerSettings.from_env(env).download
    assert download.private_hosts == ("demo", "files.local")
    assert not download.allow_private_networks
    assert WorkerSettings.from_env({}).download.private_hosts == ()


def test_refused_fetch_stores_nothing(server: RecordingServer, storage: LocalStorage) -> None:
    url = server.add("nothing", Reply(body=PNG))
    with pytest.raises(DownloadError):
        fetch(url, storage)
    assert not [p for p in storage.root.rglob("*") if p.is_file()]


def test_a_plain_pool_would_have_connected(server: RecordingServer) -> None:
    """The control for the tests above: without the guarded pool, localhost is reached."""
    url = server.add("control", Reply(body=PNG), host="localhost")
    assert urllib3.PoolManager(retries=False).request("GET", url).status == 200


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:99999/a.png", "http://127.0.0.1:port/a.png", "http://[::1/a.png"]
)
def test_a_malformed_url_is_refused_as_such(
    url: str, server: RecordingServer, storage: LocalStorage
) -> None:
    with pytest.raises(PermanentDownloadError, match="invalid URL") as info:
        fetch(url, storage, allow_private_networks=True)
    assert getattr(info.value, "attempts", 0) == 1
    # The same from a redirect: the hop is refused, not retried, and nothing is stored.
    hop = server.add(f"hop-{len(server.replies)}", Reply(302, {"Location": url}))
    with pytest.raises(PermanentDownloadError, match="invalid URL"):
        fetch(hop, storage, allow_private_networks=True)
    assert not [p for p in storage.root.rglob("*") if p.is_file()]
