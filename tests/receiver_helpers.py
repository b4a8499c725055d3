"""Building a real receiver for the tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from casefetch.redis_target import RedisTarget
from receiver.auth import Credentials
from receiver.settings import ReceiverSettings
from tests.credentials import BASIC_PASSWORD, BASIC_USER, HMAC_KEY, HMAC_SECRET, TOKEN


def settings(redis_url: str, **overrides: object) -> ReceiverSettings:
    values: dict[str, Any] = {
        "redis": RedisTarget(redis_url),
        "credentials": Credentials.build(
            bearer_tokens=(TOKEN, "rotated-token"),
            hmac_keys=((HMAC_KEY, HMAC_SECRET), ("second-key", "second-secret")),
            basic_users=((BASIC_USER, BASIC_PASSWORD),),
        ),
        "redis_timeout_seconds": 1.0,
    }
    values.update(overrides)
    return ReceiverSettings(**values)


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def hmac_headers(body: bytes, key: str = HMAC_KEY, secret: str = HMAC_SECRET) -> dict[str, str]:
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Authorization": f"HMAC-SHA256 {key}:{signature}",
        "X-Api-Key": key,
        "Content-Type": "application/json",
    }


def basic(user: str = BASIC_USER, password: str = BASIC_PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
