"""Pure units: the authentication rules."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from receiver.auth import (
    AuthError,
    Credentials,
    Scheme,
    authenticate,
    authenticate_headers,
    check_signature,
    decode_signature,
)

CREDS = Credentials.build(
    bearer_tokens=("old", "new"),
    hmac_keys=(("k1", "s1"), ("k2", "s2")),
    basic_users=(("u", "p:w"),),
)
BODY = '{"cfRef":"CF-é"}'.encode()


def sig(secret: str, body: bytes = BODY) -> bytes:
    return hmac.new(secret.encode(), body, hashlib.sha256).digest()


@pytest.mark.parametrize(
    "header,api_key,scheme",
    [
        ("Bearer old", None, Scheme.BEARER),
        ("bearer new", None, Scheme.BEARER),
        (f"HMAC-SHA256 k1:{sig('s1').hex()}", "k1", Scheme.HMAC),
        (f"hmac-sha256 k2:{sig('s2').hex().upper()}", None, Scheme.HMAC),
        (f"HMAC-SHA256 k1:{base64.b64encode(sig('s1')).decode()}", "k1", Scheme.HMAC),
        (
            f"HMAC-SHA256 k1:{base64.urlsafe_b64encode(sig('s1')).decode().rstrip('=')}",
            None,
            Scheme.HMAC,
        ),
        ("Basic " + base64.b64encode(b"u:p:w").decode(), None, Scheme.BASIC),
        ("BASIC " + base64.b64encode(b"u:p:w").decode(), None, Scheme.BASIC),
    ],
)
def test_accepted(header: str, api_key: str | None, scheme: Scheme) -> None:
    assert authenticate(header, api_key, BODY, CREDS) is scheme


@pytest.mark.parametrize(
    "header,api_key",
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer wrong", None),
        ("Token old", None),
        (f"HMAC-SHA256 k1:{sig('s2').hex()}", None),  # another key's secret
        (f"HMAC-SHA256 k3:{sig('s1').hex()}", None),  # key not configured
        (f"HMAC-SHA256 k1:{sig('s1').hex()}", "k2"),  # X-Api-Key disagrees
        (f"HMAC-SHA256 k1:{sig('s1').hex()[:-2]}", None),  # wrong length
        ("HMAC-SHA256 k1:not*base64", None),
        ("HMAC-SHA256 k1", None),
        ("HMAC-SHA256 :" + sig("s1").hex(), None),
        ("Basic !!!", None),
        ("Basic " + base64.b64encode(b"no-colon").decode(), None),
        ("Basic " + base64.b64encode(b"u:wrong").decode(), None),
    ],
)
def test_refused(header: str | None, api_key: str | None) -> None:
    with pytest.raises(AuthError):
        authenticate(header, api_key, BODY, CREDS)


def test_signature_is_over_the_exact_bytes() -> None:
    reserialised = b'{"cfRef": "CF-\\u00e9"}'  # same JSON value, other bytes
    header = f"HMAC-SHA256 k1:{sig('s1').hex()}"
    authenticate(header, None, BODY, CREDS)
    with pytest.raises(AuthError):
        authenticate(header, None, reserialised, CREDS)


def test_scheme_not_enabled_is_refused() -> None:
    only_bearer = Credentials.build(bearer_tokens=("t",))
    with pytest.raises(AuthError):
        authenticate("Basic " + base64.b64encode(b"u:p").decode(), None, BODY, only_bearer)
    assert only_bearer.challenge() == 'Bearer realm="casefetch"'


def test_decode_signature_refuses_wrong_sizes() -> None:
    with pytest.raises(AuthError):
        decode_signature(base64.b64encode(b"x" * 31).decode())
    assert decode_signature("AB" * 32) == bytes.fromhex("AB" * 32)


@pytest.mark.parametrize(
    "header,api_key,reason",
    [
        (f"HMAC-SHA256 k3:{sig('s1').hex()}", None, "unknown HMAC apiKey"),
        (f"HMAC-SHA256 k1:{sig('s1').hex()}", "k2", "X-Api-Key does not match"),
        ("HMAC-SHA256 k1:nope", None, "malformed signature"),
        ("Bearer wrong", None, "invalid bearer token"),
    ],
)
def test_headers_alone_refuse_what_they_can(header: str, api_key: str | None, reason: str) -> None:
    """No body is needed (nor any HMAC computed) to refuse these."""
    with pytest.raises(AuthError, match=reason):
        authenticate_headers(header, api_key, CREDS)


def test_a_known_key_leaves_only_its_own_secret_to_check() -> None:
    scheme, signed = authenticate_headers(f"HMAC-SHA256 k2:{sig('s2').hex()}", "k2", CREDS)
    assert scheme is Scheme.HMAC and signed is not None and signed.secrets == (b"s2",)
    check_signature(signed, BODY)
    with pytest.raises(AuthError, match="invalid HMAC signature"):
        check_signature(signed, BODY + b" ")
    assert authenticate_headers("Bearer old", None, CREDS) == (Scheme.BEARER, None)
