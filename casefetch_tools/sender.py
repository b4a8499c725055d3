"""Signing requests exactly as the certificate platform does (used by ``casefetch send``)."""

from __future__ import annotations

import base64
import hashlib
import hmac

from casefetch.config import split_basic_user, split_hmac_key


def auth_headers(
    body: bytes,
    *,
    bearer: str | None = None,
    hmac_pair: str | None = None,
    basic: str | None = None,
) -> dict[str, str]:
    if bearer is not None:
        return {"Authorization": f"Bearer {bearer}"}
    if hmac_pair is not None:
        # Taken apart as the receiver takes WEBHOOK_HMAC_KEYS apart.
        pair = split_hmac_key(hmac_pair)
        if pair is None:
            raise ValueError("--hmac takes KEY:SECRET")
        key, secret = pair
        signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return {"Authorization": f"HMAC-SHA256 {key}:{signature}", "X-Api-Key": key}
    if basic is not None:
        user = split_basic_user(basic)
        if user is None:
            raise ValueError("--basic takes USER:PASS")
        token = base64.b64encode(":".join(user).encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}
    raise ValueError("no credentials given")
