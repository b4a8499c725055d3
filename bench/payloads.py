"""Realistic cases, serialised and signed exactly as the platform sends them."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from bench.harness import HMAC_KEY, HMAC_SECRET

STEPS = ("PHOTOGRAPHY", "TEXT_FIELD", "SIGNATURE", "DATE_FIELD", "SELECT", "NUMBER_FIELD")
TEXT = "Façade côté rue — contrôle n°{n} ✓ «conforme»"


def item(n: int, image_url: str | None) -> dict[str, Any]:
    step = "PHOTOGRAPHY" if image_url else STEPS[1 + n % (len(STEPS) - 1)]
    value: dict[str, Any] = {
        "cfRef": f"IT-{n:04d}",
        "createdAt": "2026-11-28T10:00:00.000Z",
        "stepAction": step,
        "description": TEXT.format(n=n),
        "geolocLatitude": "48.8566",
        "geolocLongitude": 2.3522,
        "data": f"Photo n°{n}" if image_url else f"réponse {n}",
    }
    if image_url:
        value["imageUrl"] = image_url
    return value


def case(cf_ref: str, case_url: str, image_urls: list[str | None]) -> dict[str, Any]:
    return {
        "cfRef": cf_ref,
        "reportId": f"RPT-{cf_ref}",
        "caseUrl": case_url,
        "createdAt": "2026-11-28T10:00:00.000Z",
        "frame": "standard",
        "closed": True,
        "items": [item(n, url) for n, url in enumerate(image_urls, start=1)],
    }


def body(payload: Any) -> bytes:
    """As JSON.stringify sends it: compact, raw UTF-8."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def realistic_body(cf_ref: str = "CF-BENCH-0001", base: str = "https://files.example.com") -> bytes:
    """About 5 KiB, 20 items (half of them photographs), non-ASCII text."""
    urls: list[str | None] = [
        f"{base}/c/{cf_ref}/{n}.jpg?sig=4f9c2a" if n % 2 else None for n in range(1, 21)
    ]
    return body(case(cf_ref, f"{base}/cases/{cf_ref}/report.pdf?X-Amz-Signature=77ab", urls))


def hmac_headers(data: bytes) -> dict[str, str]:
    signature = hmac.new(HMAC_SECRET.encode(), data, hashlib.sha256).hexdigest()
    return {
        "Authorization": f"HMAC-SHA256 {HMAC_KEY}:{signature}",
        "X-Api-Key": HMAC_KEY,
        "Content-Type": "application/json",
    }


def padded_body(cf_ref: str, case_url: str, image_urls: list[str | None], size: int) -> bytes:
    """A case of exactly ``size`` bytes: the items' descriptions carry the padding."""
    payload = case(cf_ref, case_url, image_urls)
    payload["notes"] = ""
    missing = size - len(body(payload))
    if missing < 0:
        raise ValueError(f"a case of {size} bytes cannot hold these items")
    unit = "é"  # two bytes in UTF-8: the padding is non-ASCII text too
    payload["notes"] = unit * (missing // 2) + "x" * (missing % 2)
    data = body(payload)
    assert len(data) == size, (len(data), size)
    return data
