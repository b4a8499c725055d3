"""The worker's kept-alive connections, against a bare HTTP/1.1 server that counts them."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from casefetch_tools.polling import poll
from tests import samples
from tests.samples import closed_after_test, fetch_file, key_for
from worker.connections import Resolve
from worker.download import Fetcher
from worker.errors import DownloadError, RetryableDownloadError
from worker.settings import DownloadSettings
from worker.sniff import FileKind
from worker.storage import LocalStorage

PNG = samples.png()


class CountingServer:
    """Answers every GET with the same PNG (or ``reply``) over HTTP/1.1, keeping the
    connection open, or closing it silently after each answer (``drop``), as a host's idle
    timeout would: no ``Connection: close``, the client learns it only by using the
    connection again."""

    def __init__(self, drop: bool = False, reply: bytes | None = None) -> None:
        self.drop = drop
        self.reply = (
            reply
            or (
                b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n"
                b"Content-Length: %d\r\n\r\n" % len(PNG)
            )
            + PNG
        )
        #: Answers given first, in order, before ``reply``.
        self.replies: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.answered = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> CountingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}.png"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        pending = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                _, pending = pending.split(b"\r\n\r\n", 1)
                conn.sendall(self.replies.pop(0) if self.replies else self.reply)
                self.answered += 1
                if self.drop:
                    conn.shutdown(socket.SHUT_RDWR)
                    self.dropped += 1
                    return


def fetcher(slept: list[float]) -> Fetcher:
    return closed_after_test(
        Fetcher(
            DownloadSettings(allow_private_networks=True, max_attempts=3, timeout_seconds=5.0),
            sleep=slept.append,
        )
    )


@pytest.fixture
def slept() -> list[float]:
    return []


def test_a_thread_fetches_file_after_file_over_one_connection(
    storage: LocalStorage, slept: list[float]
) -> None:
    fetch = fetcher(slept)
    with CountingServer() as server:
        for i in range(5):
            fetch_file(fetch, server.url(f"f{i}"), FileKind.ITEM_IMAGE, storage, key_for(f"x/{i}"))
        assert server.answered == 5
        assert server.accepted == 1


def test_threads_do_not_share_a_connection(storage: LocalStorage, slept: list[float]) -> None:
    fetch = fetcher(slept)
    with CountingServer() as server:
        fetch_file(fetch, server.url("main"), FileKind.ITEM_IMAGE, storage, key_for("x/main"))
        other = threading.Thread(
            target=fetch_file,
            args=(fetch, server.url("other"), FileKind.ITEM_IMAGE, storage, key_for("x/other")),
        )
        other.start()
        other.join()
        fetch_file(fetch, server.url("again"), FileKind.ITEM_IMAGE, storage, key_for("x/again"))
        assert server.answered == 3
        assert server.accepted == 2
    assert (storage.root / "x/other.png").read_bytes() == PNG


def test_a_connection_the_host_closed_while_kept_is_replaced_at_once(
    storage: LocalStorage, slept: list[float]
) -> None:
    fetch = fetcher(slept)
    with CountingServer(drop=True) as server:
        first = fetch_file(fetch, server.url("a"), FileKind.ITEM_IMAGE, storage, key_for("x/a"))
        assert poll(lambda: server.dropped == 1, 5.0)  # the kept connection is dead now
        second = fetch_file(fetch, server.url("b"), FileKind.ITEM_IMAGE, storage, key_for("x/b"))
        assert server.accepted == 2
    # Not a failed attempt: the request never reached the host, so no back-off either.
    assert (first.attempts, second.attempts, slept) == (1, 1, [])
    assert (storage.root / "x/b.png").read_bytes() == PNG


def test_a_malformed_chunked_body_is_a_retried_network_error(
    storage: LocalStorage, slept: list[float]
) -> None:
    reply = (
        b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n%x\r\n" % 16 + PNG[:16] + b"\r\nnot-a-size\r\n"
    )
    with (
        CountingServer(drop=True, reply=reply) as server,
        pytest.raises(RetryableDownloadError, match="network error: IncompleteRead") as info,
    ):
        fetch_file(
            fetcher(slept), server.url("bad"), FileKind.ITEM_IMAGE, storage, key_for("x/bad")
        )
    assert info.value.attempts == 3  # type: ignore[attr-defined]
    assert not [p for p in storage.root.rglob("*") if p.is_file()]


@pytest.mark.parametrize("length,connections", [("1", 1), ("+1", 2), ("0_1", 2)])
def test_a_redirect_is_drained_for_reuse_only_when_its_length_is_ascii_digits(
    storage: LocalStorage, slept: list[float], length: str, connections: int
) -> None:
    # "+1" and "0_1" are lengths to http.client (it calls int()), not to HTTP: that host's
    # connection is closed after the redirect instead of being trusted for the next answer.
    with CountingServer() as server:
        server.replies.append(
            b"HTTP/1.1 302 Found\r\nLocation: /b.png\r\nContent-Length: "
            + length.encode()
            + b"\r\n\r\nx"
        )
        result = fetch_file(
            fetcher(slept), server.url("a"), FileKind.ITEM_IMAGE, storage, key_for("x/redirected")
        )
        assert server.answered == 2 and server.accepted == connections
    assert result.attempts == 1
    assert (storage.root / "x/redirected.png").read_bytes() == PNG


class BlackHole:
    """An address that drops every connection attempt, as a dead host's does: a listening
    socket on another loopback address whose accept queue is full and never drained, so
    the kernel drops each further SYN. Only loopback traffic, nothing leaves the machine."""

    def __init__(self, address: str, port: int) -> None:
        self.listener = socket.socket()
        self.listener.bind((address, port))
        self.listener.listen(0)
        self.filling: list[socket.socket] = []
        for _ in range(8):
            probe = socket.socket()
            probe.settimeout(0.2)
            self.filling.append(probe)
            try:
                probe.connect((address, port))
            except TimeoutError:
                return  # full: from now on, every SYN is dropped
        self.close()
        pytest.skip("this kernel does not drop connections to a full accept queue")

    def close(self) -> None:
        for sock in self.filling:
            sock.close()
        self.listener.close()


@pytest.fixture
def black_holes() -> Iterator[list[BlackHole]]:
    made: list[BlackHole] = []
    yield made
    for hole in made:
        hole.close()


def two_addresses(*addresses: str) -> Resolve:
    """A resolver that maps every name to ``addresses``, in this order (as DNS may)."""

    def resolve(host: str, port: int, **kwargs: object) -> list[tuple[object, ...]]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in addresses
        ]

    return resolve


def test_a_host_whose_first_address_black_holes_is_reached_on_the_next(
    storage: LocalStorage, black_holes: list[BlackHole]
) -> None:
    timeout = 2.0
    with CountingServer() as server:
        black_holes.append(BlackHole("127.0.0.2", server.port))
        fetch = closed_after_test(
            Fetcher(
                DownloadSettings(
                    allow_private_networks=True, max_attempts=1, timeout_seconds=timeout
                ),
                resolve=two_addresses("127.0.0.2", "127.0.0.1"),
            )
        )
        started = time.monotonic()
        result = fetch_file(
            fetch,
            f"http://two-addresses.test:{server.port}/a.png",
            FileKind.ITEM_IMAGE,
            storage,
            key_for("x/two"),
        )
        elapsed = time.monotonic() - started
        assert server.accepted == 1
    assert result.attempts == 1 and (storage.root / "x/two.png").read_bytes() == PNG
    # The dead address was tried first and had its share of the connect timeout (half, for
    # two); had it taken all of it, the one attempt would have failed.
    assert elapsed >= timeout / 2 * 0.9


def test_a_host_whose_every_address_black_holes_times_out_within_one_timeout(
    storage: LocalStorage, black_holes: list[BlackHole]
) -> None:
    timeout = 2.0
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    black_holes.extend([BlackHole("127.0.0.2", port), BlackHole("127.0.0.3", port)])
    fetch = closed_after_test(
        Fetcher(
            DownloadSettings(allow_private_networks=True, max_attempts=1, timeout_seconds=timeout),
            resolve=two_addresses("127.0.0.2", "127.0.0.3"),
        )
    )
    started = time.monotonic()
    with pytest.raises(DownloadError, match="timed out"):
        fetch_file(
            fetch, f"http://dead.test:{port}/a.png", FileKind.ITEM_IMAGE, storage, key_for("x/dead")
        )
    # One timeout shared by both addresses (a timeout each would be twice as long).
    assert timeout * 0.9 <= time.monotonic() - started < timeout * 1.5
