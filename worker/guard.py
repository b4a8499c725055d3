"""Which URLs the worker may fetch (scheme, host allowlist, private networks)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from worker.errors import PermanentDownloadError
from worker.settings import DownloadSettings


class UrlGuard:
    def __init__(self, settings: DownloadSettings) -> None:
        self.settings = settings

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
        if not self.settings.allow_private_networks:
            for address in _resolve(host, parts.port or 443, url):
                if not address.is_global or address.is_multicast:
                    raise PermanentDownloadError(
                        f"host {host} resolves to a non-public address ({address})", url)
        return host


def _resolve(host: str, port: int, url: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        from worker.errors import RetryableDownloadError

        raise RetryableDownloadError(f"cannot resolve {host}: {exc}", url) from exc
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
