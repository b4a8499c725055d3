"""Signing requests exactly as the certificate platform does (used by ``casefetch send``)."""

from __future__ import annotations

import base64
import hashlib
import hmac


def auth_headers(body: bytes, *, bearer: str | None = None, hmac_pair: str | None = None,
                 basic: str | None = None) -> dict[str, str]:
    if bearer is not None:
        return {"Authorization": f"Bearer {bearer}"}
    if hmac_pair is not None:
        key, sep, secret = hmac_pair.partition(":")
        if not sep or not key or not secret:
            raise ValueError("--hmac takes KEY:SECRET")
        signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return {"Authorization": f"HMAC-SHA256 {key}:{signature}", "X-Api-Key": key}
    if basic is not None:
        if ":" not in basic:
            raise ValueError("--basic takes USER:PASS")
        token = base64.b64encode(basic.encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}
    raise ValueError("no credentials given")
