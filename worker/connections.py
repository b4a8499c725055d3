"""The worker's HTTP client: GET over kept-alive connections, each checked where it connects.

A file is fetched on the thread that hashes and writes it, so each thread keeps its own
connection per origin (scheme, host, port) for its next file; nothing is shared or locked.
http.client speaks the protocol. What is here is the keeping, TLS, and the address guard at
connect time (see :mod:`worker.guard`): the host name is resolved once, every address it
resolves to is checked, and the socket connects to a checked one, while the Host header, TLS
SNI and certificate verification keep the name.

urllib3's pool manager did the same for more CPU per file than this, in workers where
downloads are CPU-bound (docs/benchmarks.md#worker-connections).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import SplitResult

from worker.guard import AddressCheck
from worker.headers import content_length

#: Origins a thread keeps a connection to; the least recently used one is closed beyond.
ORIGINS_PER_THREAD = 16
#: A redirect's body is read to reuse its connection only when it is this small.
DRAIN_LIMIT = 64 * 1024

Origin = tuple[str, str, int]
#: Host name resolution, as ``socket.getaddrinfo(host, port, type=SOCK_STREAM)`` answers.
Resolve = Callable[..., Sequence[tuple[Any, ...]]]

#: What a reused connection raises when the server closed it while it was idle.
_STALE = (
    http.client.RemoteDisconnected,
    http.client.BadStatusLine,
    ConnectionResetError,
    BrokenPipeError,
)


def origin_of(parts: SplitResult) -> Origin:
    """Scheme, host and port of a split http(s) URL whose port parses (the guard checked)."""
    return (
        parts.scheme,
        (parts.hostname or "").lower(),
        parts.port or (443 if parts.scheme == "https" else 80),
    )


class ConnectFailed(OSError):
    """The host's name did not resolve, or none of its addresses took the connection."""


def guarded_socket(
    host: str,
    port: int,
    timeout: float | None,
    check: AddressCheck,
    resolve: Resolve = socket.getaddrinfo,
) -> socket.socket:
    """A socket connected to ``host``: resolved once, every address checked (the check
    raises to refuse), connected to a checked address.

    The addresses are tried in turn, as the standard library and urllib3 do, but within
    one ``timeout`` for them all: each gets an even share of what is left, so an address
    that drops every packet (a dead first A record) leaves time for the next.
    """
    try:
        infos = resolve(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectFailed(f"cannot resolve {host}: {exc}") from exc
    addresses: dict[str, None] = {}
    for *_, sockaddr in infos:
        text = str(sockaddr[0])
        check(host, ipaddress.ip_address(text.split("%", 1)[0]))
        addresses[text] = None
    last_error: OSError = ConnectFailed(f"no address for {host}")
    deadline = None if timeout is None else time.monotonic() + timeout
    timeouts = 0
    for tried, text in enumerate(addresses):
        share = (
            None
            if deadline is None
            else max(0.0, deadline - time.monotonic()) / (len(addresses) - tried)
        )
        try:
            # An address literal: create_connection makes no DNS query of its own.
            sock = socket.create_connection((text, port), share)
        except OSError as exc:  # TimeoutError included
            timeouts += isinstance(exc, TimeoutError)
            last_error = exc
            continue
        sock.settimeout(timeout)  # from now on the between-bytes timeout
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    if addresses and timeouts == len(addresses):
        raise TimeoutError(f"connection to {host} timed out") from last_error
    raise ConnectFailed(f"cannot connect to {host}: {last_error}")


class GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(
        self,
        host: str,
        port: int,
        timeout: float,
        check: AddressCheck,
        resolve: Resolve = socket.getaddrinfo,
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self.check = check
        self.resolve = resolve

    def connect(self) -> None:
        self.sock = guarded_socket(self.host, self.port, self.timeout, self.check, self.resolve)


class GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(
        self,
        host: str,
        port: int,
        timeout: float,
        check: AddressCheck,
        resolve: Resolve = socket.getaddrinfo,
    ) -> None:
        # A context per connection, as urllib3 makes one: it reads the trust store
        # (SSL_CERT_FILE, SSL_CERT_DIR, the system's) when the connection is made.
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.check = check
        self.resolve = resolve

    def connect(self) -> None:
        sock = guarded_socket(self.host, self.port, self.timeout, self.check, self.resolve)
        try:
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


class Response:
    """A response whose connection goes back to its thread's set once its body is read."""

    def __init__(
        self,
        raw: http.client.HTTPResponse,
        connection: http.client.HTTPConnection,
        origin: Origin,
        owner: Connections,
    ) -> None:
        self.raw = raw
        self.status = raw.status
        self._connection = connection
        self._origin = origin
        self._owner = owner

    def header(self, name: str) -> str | None:
        return self.raw.getheader(name)

    def release(self) -> None:
        """Keep the connection for the next request if the whole body was read and the
        server keeps it open; close it otherwise."""
        if self.raw.isclosed() and not self.raw.will_close:
            self._owner.keep(self._origin, self._connection)
        else:
            self.close()

    def drain(self) -> None:
        """Read a small body to the end (a redirect's), so the connection can be reused."""
        length = self.raw.length
        # http.client takes what int() takes ("+1", "1_0") as a length; only digits are one.
        declared = content_length(self.header("Content-Length"))
        if length is not None and length <= DRAIN_LIMIT and declared == length:
            try:
                self.raw.read()
            except (OSError, http.client.HTTPException):
                self.close()
                return
        self.release()

    def close(self) -> None:
        self.raw.close()
        self._connection.close()

    def abort(self) -> None:
        """Stop the transfer from another thread: a read blocked on it returns at once.
        Only shut down, not closed: the reading thread closes it (a descriptor closed under
        a blocked read could be reused by another file's connection meanwhile)."""
        sock = self._connection.sock
        if sock is not None:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Connections:
    """Each thread's kept-alive connections, one per origin."""

    def __init__(self, check: AddressCheck, timeout: float, resolve: Resolve | None = None) -> None:
        self.check = check
        self.timeout = timeout
        self.resolve = resolve or socket.getaddrinfo
        self._local = threading.local()
        #: Every thread's kept connections, for close(); a thread adds its own once.
        self._every: list[dict[Origin, http.client.HTTPConnection]] = []
        self._every_lock = threading.Lock()

    def get(self, parts: SplitResult, headers: dict[str, str]) -> Response:
        """Send ``GET`` for a URL (split, http or https) and read the response's head.

        A kept connection the server has closed meanwhile is replaced once, at once: the
        request never reached the server.
        """
        origin = origin_of(parts)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection = self._kept().pop(origin, None)
        if connection is not None:
            try:
                return self._send(connection, origin, target, headers)
            except _STALE:
                pass  # closed by _send; a new connection follows
        return self._send(self._new(origin), origin, target, headers)

    def keep(self, origin: Origin, connection: http.client.HTTPConnection) -> None:
        kept = self._kept()
        kept[origin] = connection
        while len(kept) > ORIGINS_PER_THREAD:
            kept.pop(next(iter(kept))).close()

    def _send(
        self,
        connection: http.client.HTTPConnection,
        origin: Origin,
        target: str,
        headers: dict[str, str],
    ) -> Response:
        try:
            connection.request("GET", target, headers=headers)
            raw = connection.getresponse()
        except BaseException:
            connection.close()
            raise
        return Response(raw, connection, origin, self)

    def _new(self, origin: Origin) -> http.client.HTTPConnection:
        scheme, host, port = origin
        cls = GuardedHTTPSConnection if scheme == "https" else GuardedHTTPConnection
        return cls(host, port, self.timeout, self.check, self.resolve)

    def _kept(self) -> dict[Origin, http.client.HTTPConnection]:
        kept: dict[Origin, http.client.HTTPConnection] | None = getattr(self._local, "kept", None)
        if kept is None:
            kept = self._local.kept = {}
            with self._every_lock:
                self._every.append(kept)
        return kept

    def close(self) -> None:
        """Close the connections every thread keeps (none may be in use)."""
        with self._every_lock:
            every, self._every = self._every, []
        for kept in every:
            while kept:
                kept.pop(next(iter(kept))).close()
        self._local = threading.local()

    def __enter__(self) -> Connections:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
