"""Which URLs the worker may fetch, and which addresses it may connect to.

Two checks, both needed:

- :class:`UrlGuard` looks at each URL before it is requested (the first and every redirect):
  http or https only, a host in DOWNLOAD_ALLOWED_HOSTS when that is set, and no literal
  non-public address.
- an :data:`AddressCheck` (:func:`address_check`) is run on the address the socket actually
  connects to (:func:`worker.connections.guarded_socket`): the host name is resolved once,
  the connection is refused when any resolved address is non-public, and the socket connects
  to an address that was checked; the Host header, TLS SNI and certificate verification still
  use the host name. So a name that resolves to a public address for a first look-up and to
  127.0.0.1 for the next (DNS rebinding) gains nothing: there is no second look-up.

With DOWNLOAD_ALLOW_PRIVATE_NETWORKS on, only the address checks are skipped; the host names
in DOWNLOAD_PRIVATE_HOSTS skip them on their own (a demo's file host on a private network).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from urllib.parse import urlsplit

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
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_unspecified
        and not address.is_link_local
    )


def refuse_non_public(host: str, address: IPAddress) -> None:
    if not is_public(address):
        raise BlockedAddress(f"host {host} resolves to a non-public address ({address})")


def allow_any(host: str, address: IPAddress) -> None:
    """The check used when DOWNLOAD_ALLOW_PRIVATE_NETWORKS is on."""


class PrivateHosts:
    """The check used when DOWNLOAD_PRIVATE_HOSTS names hosts: those may resolve to any
    address, every other host only to public ones."""

    def __init__(self, hosts: tuple[str, ...]) -> None:
        self.hosts = frozenset(hosts)

    def __call__(self, host: str, address: IPAddress) -> None:
        if host.lower() not in self.hosts:
            refuse_non_public(host, address)


def address_check(settings: DownloadSettings) -> AddressCheck:
    if settings.allow_private_networks:
        return allow_any
    if settings.private_hosts:
        return PrivateHosts(settings.private_hosts)
    return refuse_non_public


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
        """Return the URL's host when it may be fetched; raise PermanentDownloadError if not.
        ``url`` is as requested (:func:`worker.urls.request_url`: an IDN host in its IDNA
        form, as the settings hold host names)."""
        try:
            parts = urlsplit(url)
            _ = parts.port  # a port that is not a number, or out of range, raises here
        except ValueError as exc:
            raise PermanentDownloadError(f"invalid URL: {exc}", url) from None
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
