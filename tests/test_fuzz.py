"""Fuzzing the receiver: at least 10,000 generated requests, none may get a 5xx.

Requests are built from valid deliveries and then damaged (bytes flipped, cut, inserted,
nested, blown past the size limit, mis-encoded, mis-signed...), with valid, damaged, foreign
or missing credentials and content types. They go to the real receiver app over a real local
socket (aiohttp's test server), which writes to a real Redis. The seed is printed, and
FUZZ_SEED replays a run.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from casefetch.constants import INGEST_QUEUE
from casefetch_tools.redis_server import RedisServer
from receiver import create_app
from tests import receiver_helpers as rh
from tests import samples
from tests.credentials import BASIC_PASSWORD, BASIC_USER, HMAC_KEY, HMAC_SECRET, TOKEN

REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "10000"))
#: The run must end well inside this, or it fails (CI stays bounded in time).
TIME_LIMIT_SECONDS = 240
MAX_BODY = 16384
CONCURRENCY = 16
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

TRICKY_TEXT = [
    "",
    " ",
    "\x00",
    "é",
    "😀",
    "\u2028",
    "\ud7ff",
    "%00",
    "../",
    "\\",
    "'\"",
    "A" * 3000,
    "null",
    "[]",
    "{}",
    "\ufeff",
    "\u202e",
]
#: What a client can put in a header at all (aiohttp refuses control characters).
HEADER_TEXT = [t for t in TRICKY_TEXT if not any(ord(c) < 0x20 or c == "\x7f" for c in t)]


class Fuzzer:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def payload(self) -> dict[str, Any]:
        rng = self.rng
        items = [
            samples.item(
                f"IT-{i}{rng.choice(TRICKY_TEXT[:10])}",
                rng.choice(
                    [
                        None,
                        "",
                        "https://files.example.com/i.png",
                        "ftp://x/y",
                        "http://169.254.169.254/",
                    ]
                ),
                step=rng.choice(["PHOTOGRAPHY", "TEXT_FIELD", "BOGUS"]),
            )
            for i in range(rng.randrange(4))
        ]
        case = samples.case(
            f"CF-{rng.randrange(10**6)}{rng.choice(TRICKY_TEXT[:12])}",
            "https://files.example.com/c.pdf?sig=a%2Bb",
            items,
        )
        if rng.random() < 0.2:
            case[rng.choice(list(case))] = self.json_value(3)
        return case

    def json_value(self, depth: int) -> Any:
        rng = self.rng
        kind = rng.randrange(8 if depth > 0 else 5)
        if kind == 0:
            return None
        if kind == 1:
            return rng.choice([True, False, 0, -1, 2**63, 1e308, -0.0, 1.5])
        if kind in (2, 3, 4):
            return rng.choice(TRICKY_TEXT)
        if kind in (5, 6):
            return [self.json_value(depth - 1) for _ in range(rng.randrange(4))]
        return {rng.choice(TRICKY_TEXT): self.json_value(depth - 1) for _ in range(3)}

    def damage(self, body: bytes) -> bytes:
        rng = self.rng
        nesting = rng.choice([10, 63, 64, 65, 200, 5000])
        damages: list[Callable[[], bytes]] = [
            lambda: self.flip(body),
            lambda: body[: rng.randrange(len(body) + 1)],
            lambda: self.insert(body),
            lambda: b'{"a":' + b"[" * nesting + b"]" * nesting + b"}",
            lambda: body + b" " * (MAX_BODY - len(body) + rng.randrange(1, 3)),
            lambda: body.replace(b'"', b'"\xff', 1),  # not UTF-8
            lambda: json.dumps(self.json_value(4)).encode(),
            lambda: rng.randbytes(rng.randrange(0, 2000)),
            lambda: b"[" * rng.randrange(1, 60000),
            lambda: b'{"a":' + b"9" * rng.choice([10, 4300, 4301, 9000]) + b"}",
            lambda: body.replace(b'"CF-', b'"\\ud800\\u0000CF-', 1),
        ]
        return rng.choice(damages)()

    def flip(self, body: bytes) -> bytes:
        data = bytearray(body)
        for _ in range(self.rng.randrange(1, 8)):
            data[self.rng.randrange(len(data))] = self.rng.randrange(256)
        return bytes(data)

    def insert(self, body: bytes) -> bytes:
        at = self.rng.randrange(len(body) + 1)
        return body[:at] + self.rng.randbytes(self.rng.randrange(1, 64)) + body[at:]

    def auth(self, body: bytes, original: bytes) -> dict[str, str]:
        rng = self.rng
        signature = hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).digest()
        basic = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
        choices = [
            {"Authorization": f"Bearer {TOKEN}"},
            {"Authorization": f"bearer {TOKEN}"},
            {"Authorization": f"Basic {basic}"},
            {"Authorization": f"HMAC-SHA256 {HMAC_KEY}:{signature.hex()}", "X-Api-Key": HMAC_KEY},
            {"Authorization": f"HMAC-SHA256 {HMAC_KEY}:{base64.b64encode(signature).decode()}"},
            {
                "Authorization": "HMAC-SHA256 "
                + HMAC_KEY
                + ":"
                + hmac.new(HMAC_SECRET.encode(), original, hashlib.sha256).hexdigest()
            },
            {
                "Authorization": f"HMAC-SHA256 {HMAC_KEY}:{signature.hex()}",
                "X-Api-Key": rng.choice(HEADER_TEXT),
            },
            {
                "Authorization": rng.choice(["Bearer", "Basic", "HMAC-SHA256", "Digest", ""])
                + " "
                + rng.choice(HEADER_TEXT)
            },
            {"Authorization": f"Basic {base64.b64encode(rng.randbytes(12)).decode()}"},
            {},
        ]
        headers = dict(rng.choice(choices))
        if "Authorization" in headers and rng.random() < 0.1:  # damage one character
            value = list(headers["Authorization"])
            value[rng.randrange(len(value))] = rng.choice("xX0=:/+ ")
            headers["Authorization"] = "".join(value)
        return headers

    def content_type(self) -> str | None:
        return self.rng.choice(
            ["application/json"] * 6
            + [
                "application/json; charset=utf-8",
                "APPLICATION/JSON",
                "application/json;;;",
                "text/plain",
                "multipart/form-data; boundary=x",
                "application/jsonx",
                None,
            ]
        )

    def request(self) -> tuple[bytes, dict[str, str]]:
        original = samples.body(self.payload())
        body = self.damage(original) if self.rng.random() < 0.7 else original
        headers = self.auth(body, original)
        content_type = self.content_type()
        if content_type is not None:
            headers["Content-Type"] = content_type
        if self.rng.random() < 0.03:
            headers["Content-Encoding"] = "gzip"
            body = gzip.compress(body) if self.rng.random() < 0.5 else body
        return body, headers


@pytest.mark.timeout(TIME_LIMIT_SECONDS + 60)
async def test_fuzzed_requests_never_get_a_5xx(
    aiohttp_client: ClientFactory, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    queue_url = redis_server.db_url(7)
    queue = redis.Redis.from_url(queue_url)
    queue.delete(INGEST_QUEUE)
    client = await aiohttp_client(create_app(rh.settings(queue_url, max_body_bytes=MAX_BODY)))
    seed = int(os.environ.get("FUZZ_SEED", random.SystemRandom().randrange(2**32)))
    fuzzer = Fuzzer(random.Random(seed))
    statuses: Counter[int] = Counter()
    failures: list[tuple[int, bytes, dict[str, str]]] = []

    async def send(body: bytes, headers: dict[str, str]) -> None:
        response = await client.post(
            "/webhooks", data=body, headers=headers, skip_auto_headers={"Content-Type"}
        )
        await response.read()
        statuses[response.status] += 1
        if response.status >= 500:
            failures.append((response.status, body[:200], headers))

    started = time.monotonic()
    sent = 0
    while sent < REQUESTS:
        batch = [fuzzer.request() for _ in range(min(CONCURRENCY, REQUESTS - sent))]
        await asyncio.gather(*(send(body, headers) for body, headers in batch))
        sent += len(batch)
        assert time.monotonic() - started < TIME_LIMIT_SECONDS, f"too slow: {sent} sent"
    elapsed = time.monotonic() - started
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    accepted = queue.llen(INGEST_QUEUE)
    queue.delete(INGEST_QUEUE)
    queue.close()
    with capsys.disabled():
        print(
            f"\nfuzz: seed {seed}: {sent} requests sent, {server_errors} answered 5xx, "
            f"{elapsed:.1f}s; statuses {dict(sorted(statuses.items()))}"
        )
    assert sent >= REQUESTS >= 10_000 or os.environ.get("FUZZ_REQUESTS")
    assert server_errors == 0, failures[:5]
    assert accepted == statuses[202]
    assert statuses[202] and statuses[400] and statuses[401] and statuses[413]
