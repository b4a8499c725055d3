"""Authentication of webhook requests, as the certificate platform sends them.

Pure functions over the Authorization header, the X-Api-Key header and the raw body. Every
secret comparison goes through :func:`hmac.compare_digest`, and every configured credential
of a scheme is compared (no early exit), so timing tells nothing about which one matched.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from enum import Enum


class Scheme(str, Enum):
    BEARER = "Bearer"
    HMAC = "HMAC-SHA256"
    BASIC = "Basic"


class AuthError(Exception):
    """The request is not authenticated; ``reason`` is safe to log (it holds no secret)."""

    def __init__(self, reason: str, scheme: Scheme | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.scheme = scheme


@dataclass(frozen=True)
class Credentials:
    bearer_tokens: tuple[bytes, ...] = ()
    hmac_keys: tuple[tuple[bytes, bytes], ...] = ()
    basic_users: tuple[tuple[bytes, bytes], ...] = ()

    @classmethod
    def build(
        cls,
        bearer_tokens: tuple[str, ...] = (),
        hmac_keys: tuple[tuple[str, str], ...] = (),
        basic_users: tuple[tuple[str, str], ...] = (),
    ) -> Credentials:
        return cls(
            bearer_tokens=tuple(t.encode() for t in bearer_tokens),
            hmac_keys=tuple((k.encode(), s.encode()) for k, s in hmac_keys),
            basic_users=tuple((u.encode(), p.encode()) for u, p in basic_users),
        )

    @property
    def schemes(self) -> tuple[Scheme, ...]:
        enabled = []
        if self.bearer_tokens:
            enabled.append(Scheme.BEARER)
        if self.hmac_keys:
            enabled.append(Scheme.HMAC)
        if self.basic_users:
            enabled.append(Scheme.BASIC)
        return tuple(enabled)

    def challenge(self) -> str:
        """The WWW-Authenticate value naming every enabled scheme."""
        return ", ".join(f'{scheme.value} realm="casefetch"' for scheme in self.schemes)


_SCHEMES_BY_NAME = {scheme.value.lower(): scheme for scheme in Scheme}


def parse_authorization(header: str | None, credentials: Credentials) -> tuple[Scheme, str]:
    """Split ``<scheme> <value>``; refuse schemes that are unknown or not enabled."""
    if not header:
        raise AuthError("missing Authorization header")
    name, _, value = header.strip().partition(" ")
    scheme = _SCHEMES_BY_NAME.get(name.lower())
    if scheme is None or scheme not in credentials.schemes:
        raise AuthError("authentication scheme not accepted")
    value = value.strip()
    if not value:
        raise AuthError("empty credentials", scheme)
    return scheme, value


def _matches_any(candidate: bytes, secrets: tuple[bytes, ...]) -> bool:
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(candidate, secret)
    return found


def check_bearer(value: str, credentials: Credentials) -> None:
    if not _matches_any(value.encode("utf-8", "surrogateescape"), credentials.bearer_tokens):
        raise AuthError("invalid bearer token", Scheme.BEARER)


def check_basic(value: str, credentials: Credentials) -> None:
    try:
        decoded = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise AuthError("malformed basic credentials", Scheme.BASIC) from exc
    user, sep, password = decoded.partition(b":")
    if not sep:
        raise AuthError("malformed basic credentials", Scheme.BASIC)
    found = False
    for known_user, known_password in credentials.basic_users:
        found |= hmac.compare_digest(user, known_user) & hmac.compare_digest(
            password, known_password
        )
    if not found:
        raise AuthError("invalid basic credentials", Scheme.BASIC)


def decode_signature(text: str) -> bytes:
    """A SHA-256 signature given as hex (any case) or base64 (standard or URL-safe)."""
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        raw = text.encode("ascii")
        raw += b"=" * (-len(raw) % 4)
        decoded = base64.b64decode(raw.replace(b"-", b"+").replace(b"_", b"/"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise AuthError("malformed signature", Scheme.HMAC) from exc
    if len(decoded) != hashlib.sha256().digest_size:
        raise AuthError("malformed signature", Scheme.HMAC)
    return decoded


@dataclass(frozen=True)
class Signed:
    """An HMAC request whose apiKey is known: what its signature is checked with, once the
    body is in."""

    secrets: tuple[bytes, ...]
    signature: bytes


def check_hmac_key(value: str, api_key_header: str | None, credentials: Credentials) -> Signed:
    """Everything about ``<apiKey>:<signature>`` that does not need the body: the form, the
    X-Api-Key header, the apiKey being one configured. So a request with an unknown key is
    refused before its body is read or any HMAC computed."""
    key_text, sep, signature_text = value.rpartition(":")
    if not sep or not key_text or not signature_text:
        raise AuthError("malformed HMAC credentials", Scheme.HMAC)
    key = key_text.encode("utf-8", "surrogateescape")
    if api_key_header is not None and not hmac.compare_digest(
        api_key_header.encode("utf-8", "surrogateescape"), key
    ):
        raise AuthError("X-Api-Key does not match the key in Authorization", Scheme.HMAC)
    signature = decode_signature(signature_text.strip())
    # Every configured key is compared; only which one matched decides whose secret is used.
    secrets = tuple(
        secret for known_key, secret in credentials.hmac_keys if hmac.compare_digest(key, known_key)
    )
    if not secrets:
        raise AuthError("unknown HMAC apiKey", Scheme.HMAC)
    return Signed(secrets, signature)


def check_signature(signed: Signed, body: bytes) -> None:
    found = False
    for secret in signed.secrets:
        expected = hmac.digest(secret, body, "sha256")  # one C call, no HMAC object
        found |= hmac.compare_digest(signed.signature, expected)
    if not found:
        raise AuthError("invalid HMAC signature", Scheme.HMAC)


def authenticate_headers(
    header: str | None, api_key_header: str | None, credentials: Credentials
) -> tuple[Scheme, Signed | None]:
    """Check what a request's headers alone can tell; raise AuthError when it is not
    authenticated. Bearer and Basic are then fully checked; for HMAC the :class:`Signed`
    returned is checked against the body with :func:`check_signature`."""
    scheme, value = parse_authorization(header, credentials)
    if scheme is Scheme.BEARER:
        check_bearer(value, credentials)
        return scheme, None
    if scheme is Scheme.BASIC:
        check_basic(value, credentials)
        return scheme, None
    return scheme, check_hmac_key(value, api_key_header, credentials)


def authenticate(
    header: str | None, api_key_header: str | None, body: bytes, credentials: Credentials
) -> Scheme:
    """Check a whole request; raise AuthError when it is not authenticated."""
    scheme, signed = authenticate_headers(header, api_key_header, credentials)
    if signed is not None:
        check_signature(signed, body)
    return scheme
