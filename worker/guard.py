"""Which URLs the worker may fetch, and which addresses it may connect to.

Two checks, both needed:

- :class:`UrlGuard` looks at each URL before it is requested (the first and every redirect):
  http or https only, a host in DOWNLOAD_ALLOWED_HOSTS when that is set, and no literal
  non-public address.
- :class:`GuardedPoolManager` checks the address the socket actually connects to. Its
  connections resolve the host name once, refuse the connection when any resolved address is
  non-public, and connect to the address they checked; the Host header, TLS SNI and
  certificate verification still use the host name. So a name that resolves to a public
  address for a first look-up and to 127.0.0.1 for the next (DNS rebinding) gains nothing:
  there is no second look-up.

With DOWNLOAD_ALLOW_PRIVATE_NETWORKS on, only the address checks are skipped.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from urllib3 import HTTPConnectionPool, PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from worker.errors import PermanentDownloadError
from worker.settings import DownloadSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Called with (host, address) before a socket connects; raises to refuse the connection.
AddressCheck = Callable[[str, IPAddress], None]

#: NAT64 (RFC 6052) embeds an IPv4 address in an IPv6 one; so do the mapped, 6to4 and Teredo
#: forms, which ``ipaddress`` unpacks itself.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class BlockedAddress(PermanentDownloadError):
    """The host is, or resolves to, an address the worker must not connect to."""


def is_public(address: IPAddress) -> bool:
    """True for a unicast address on the public internet (IPv4 or IPv6)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded: list[ipaddress.IPv4Address] = []
        if address.ipv4_mapped is not None:
            embedded.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            embedded.append(address.sixtofour)
        if address.teredo is not None:
            embedded.extend(address.teredo)
        if address in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if not all(is_public(inner) for inner in embedded):
            return False
    return (address.is_global and not address.is_multicast and not address.is_reserved
            and not address.is_unspecified and not address.is_link_local)


def refuse_non_public(host: str, address: IPAddress) -> None:
    if not is_public(address):
        raise BlockedAddress(f"host {host} resolves to a non-public address ({address})")


def allow_any(host: str, address: IPAddress) -> None:
    """The check used when DOWNLOAD_ALLOW_PRIVATE_NETWORKS is on."""


def address_check(settings: DownloadSettings) -> AddressCheck:
    return allow_any if settings.allow_private_networks else refuse_non_public


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


class UrlGuard:
    def __init__(self, settings: DownloadSettings) -> None:
        self.settings = settings
        self.check_address = address_check(settings)

    def check(self, url: str) -> str:
        """Return the URL's host when it may be fetched; raise PermanentDownloadError if not."""
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"}:
            raise PermanentDownloadError(f"scheme {parts.scheme!r} is not allowed", url)
        host = (parts.hostname or "").lower()
        if not host:
            raise PermanentDownloadError("URL has no host", url)
        if self.settings.allowed_hosts and host not in self.settings.allowed_hosts:
            raise PermanentDownloadError(f"host {host} is not in DOWNLOAD_ALLOWED_HOSTS", url)
        literal = _literal(host)
        if literal is not None:
            try:
                self.check_address(host, literal)
            except BlockedAddress as exc:
                raise BlockedAddress(exc.message, url) from None
        return host


def connect(conn: HTTPConnection, check: AddressCheck) -> socket.socket:
    """Resolve ``conn``'s host once, check every address, connect to a checked one.

    ``conn.host`` is left alone: the Host header and TLS (SNI, certificate) keep the name.
    """
    try:
        infos = socket.getaddrinfo(conn._dns_host, conn.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    addresses: dict[str, None] = {}
    for *_, sockaddr in infos:
        text = str(sockaddr[0])
        check(conn.host, ipaddress.ip_address(text.split("%", 1)[0]))
        addresses[text] = None
    last_error: OSError = OSError(f"no address for {conn.host}")
    for text in addresses:
        try:
            # An address literal: create_connection makes no DNS query of its own.
            return urllib3_connection.create_connection(
                (text, conn.port), conn.timeout, source_address=conn.source_address,
                socket_options=conn.socket_options)
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                conn, f"connection to {conn.host} timed out") from exc
        except OSError as exc:
            last_error = exc
    raise NewConnectionError(conn, f"failed to establish a new connection: {last_error}")


class GuardedHTTPConnection(HTTPConnection):
    def __init__(self, *args: Any, address_check: AddressCheck = refuse_non_public,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.address_check = address_check

    def _new_conn(self) -> socket.socket:
        return connect(self, self.address_check)


class GuardedHTTPSConnection(HTTPSConnection):
    def __init__(self, *args: Any, address_check: AddressCheck = refuse_non_public,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.address_check = address_check

    def _new_conn(self) -> socket.socket:
        return connect(self, self.address_check)


class GuardedPoolManager(PoolManager):
    """A PoolManager whose every connection goes through ``check`` at connect time."""

    def __init__(self, check: AddressCheck, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check

    def _new_pool(self, scheme: str, host: str, port: int,
                  request_context: dict[str, Any] | None = None) -> HTTPConnectionPool:
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.ConnectionCls = GuardedHTTPSConnection if scheme == "https" else GuardedHTTPConnection
        pool.conn_kw["address_check"] = self.check
        return pool


