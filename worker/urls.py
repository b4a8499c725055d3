"""URLs as a browser sends them: what the platform writes (``JSON.stringify`` leaves ``é`` as
it is) turned into the ASCII request a browser would make of it.

Non-ASCII characters, spaces and the few characters a browser escapes in a path or a query
become UTF-8 percent-escapes; an existing ``%XX`` is left alone, so an escaped URL is not
escaped twice. A host name becomes its IDNA form (``xn--...``). The fragment is not sent.
A URL that cannot become a request raises :class:`InvalidUrl`.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import SplitResult, urlsplit, urlunsplit


class InvalidUrl(ValueError):
    """The URL cannot be turned into a request (bad port, host or IDNA label)."""


#: What a browser escapes in a path, a query (of an http(s) URL) and the user part, on top
#: of controls, space and non-ASCII (WHATWG URL, "percent-encode sets").
_PATH_ESCAPED = frozenset('"<>`{}')
_QUERY_ESCAPED = frozenset("\"<>'")
_USER_ESCAPED = frozenset('"<>`{}/:;=@[\\]^|')
#: Characters no host name may hold (WHATWG "forbidden host code points").
_FORBIDDEN_HOST = frozenset(" #%/:<>?@[\\]^|")


def request_url(url: str) -> str:
    """``url`` as a browser would request it (ASCII only); raise InvalidUrl if it cannot be."""
    # A lone surrogate (JSON allows "\ud800") is what a browser reads as U+FFFD.
    url = url.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    # Browsers drop tabs and newlines anywhere, and controls or spaces around the URL.
    url = url.replace("\t", "").replace("\n", "").replace("\r", "")
    url = url.strip("".join(map(chr, range(0x21))))
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is not a number, or out of range, raises here
    except ValueError as exc:
        raise InvalidUrl(str(exc)) from None
    if not parts.hostname and (parts.scheme in {"http", "https"} or parts.path[:2] == "//"):
        raise InvalidUrl("the URL has no host")
    netloc = _netloc(parts, port)
    if url.isascii() and not _needs_escaping(url) and not parts.fragment:
        return url
    path = parts.path.replace("\\", "/") if parts.scheme in {"http", "https"} else parts.path
    return urlunsplit(
        (
            parts.scheme,
            netloc,
            _escape(path, _PATH_ESCAPED),
            _escape(parts.query, _QUERY_ESCAPED),
            "",
        )
    )


def ascii_host(host: str) -> str:
    """A host name in the form DNS and the Host header take: lower case, IDNA for non-ASCII
    labels; an address literal as it is. Raise InvalidUrl when it cannot be one."""
    host = host.lower()
    if ":" in host:  # an IPv6 literal (urlsplit took its brackets off)
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError as exc:
            raise InvalidUrl(f"invalid IPv6 address {host!r}") from exc
        return host
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidUrl(f"host {host!r} has no IDNA form: {exc}") from None
    if any(ch in _FORBIDDEN_HOST or ord(ch) < 0x21 or ord(ch) == 0x7F for ch in host):
        raise InvalidUrl(f"host {host!r} holds a character no host name may hold")
    return host


def _netloc(parts: SplitResult, port: int | None) -> str:
    host = ascii_host(parts.hostname or "")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    user, at, _ = parts.netloc.rpartition("@")
    if not at:
        return netloc
    name, colon, password = user.partition(":")
    return f"{_escape(name, _USER_ESCAPED)}{colon}{_escape(password, _USER_ESCAPED)}@{netloc}"


def _needs_escaping(text: str) -> bool:
    return any(
        ord(ch) < 0x21 or ord(ch) == 0x7F or ch in _PATH_ESCAPED or ch in "'\\" for ch in text
    )


def _escape(text: str, escaped: frozenset[str]) -> str:
    return "".join(
        ch
        if 0x20 < ord(ch) < 0x7F and ch not in escaped
        else "".join(f"%{byte:02X}" for byte in ch.encode("utf-8"))
        for ch in text
    )
