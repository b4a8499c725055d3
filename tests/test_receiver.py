"""The real receiver on a real port, writing to a real Redis."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp.test_utils import TestClient

from casefetch.constants import INBOX_INDEX_KEY, INBOX_KEY, INGEST_QUEUE, INGEST_TASK
from casefetch_tools.redis_server import RedisServer, free_port
from receiver import create_app
from tests import receiver_helpers as rh
from tests import samples

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
PAYLOAD = samples.body(
    samples.case(
        "CF-R1",
        "https://files.example.com/c.pdf?sig=a%2Bb",
        [samples.item("IT-1", "https://files.example.com/1.jpg", data="Été 🌞 \u2028 ligne")],
    )
)


@pytest.fixture
def queue_url(redis_server: RedisServer) -> str:
    """A database of its own: the session's worker must not consume what these tests check."""
    return redis_server.db_url(3)


@pytest.fixture
def redis_client(queue_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(queue_url)
    client.delete(INGEST_QUEUE, INBOX_KEY, INBOX_INDEX_KEY)
    yield client
    client.close()


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, queue_url: str, redis_client: redis.Redis
) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(rh.settings(queue_url)))


def queued(redis_client: redis.Redis) -> list[dict[str, Any]]:
    """The deliveries waiting in the ingest queue: each Celery message names one, which the
    inbox keeps until a worker has archived or quarantined it."""
    deliveries = []
    for raw in redis_client.lrange(INGEST_QUEUE, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == INGEST_TASK
        [ref], _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        assert set(ref) == {"deliveryId", "receivedAt"}  # the payload is not written twice
        assert message["headers"]["id"] == ref["deliveryId"]
        kept = redis_client.hget(INBOX_KEY, ref["deliveryId"])
        assert kept is not None, "queued without its inbox entry"
        delivery = json.loads(kept)
        assert delivery["receivedAt"] == ref["receivedAt"]
        deliveries.append(delivery)
    return deliveries


@pytest.mark.parametrize(
    "headers",
    [
        rh.bearer(),
        rh.bearer("rotated-token"),
        rh.hmac_headers(PAYLOAD),
        rh.hmac_headers(PAYLOAD, "second-key", "second-secret"),
        rh.basic(),
    ],
    ids=["bearer", "bearer-rotated", "hmac", "hmac-second-key", "basic"],
)
async def test_each_scheme_is_accepted_and_enqueued(
    client: TestClient[Any, Any], redis_client: redis.Redis, headers: dict[str, str]
) -> None:
    response = await client.post("/webhooks", data=PAYLOAD, headers=headers)
    assert response.status == 202
    answer = await response.json()
    assert answer["status"] == "accepted"
    [delivery] = queued(redis_client)
    assert delivery["deliveryId"] == answer["deliveryId"]
    assert redis_client.zscore(INBOX_INDEX_KEY, answer["deliveryId"]) is not None
    assert delivery["body"].encode() == PAYLOAD  # the exact bytes, non-ASCII included
    assert "Authorization" not in delivery["headers"]
    assert "X-Api-Key" not in delivery["headers"]


async def test_non_ascii_body_signed_over_its_exact_bytes(
    client: TestClient[Any, Any], redis_client: redis.Redis
) -> None:
    body = '{"cfRef":"CF-ü","note":"emoji 😀, sep \u2028, quote \\"x\\""}'.encode()
    response = await client.post("/webhooks", data=body, headers=rh.hmac_headers(body))
    assert response.status == 202
    assert queued(redis_client)[0]["body"].encode() == body


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},
        rh.bearer("wrong"),
        {**rh.bearer(), "Authorization": "Bearer "},
        rh.hmac_headers(PAYLOAD, secret="wrong"),
        rh.hmac_headers(PAYLOAD, key="unknown-key"),
        {**rh.hmac_headers(PAYLOAD), "X-Api-Key": "second-key"},
        rh.hmac_headers(PAYLOAD + b" "),
        rh.basic(password="nope"),
        {**rh.basic(), "Authorization": "Basic not-base64!"},
        {**rh.bearer(), "Authorization": "Digest abc"},
    ],
    ids=[
        "missing",
        "bearer-wrong",
        "bearer-empty",
        "hmac-wrong-secret",
        "hmac-unknown-key",
        "hmac-key-mismatch",
        "hmac-other-body",
        "basic-wrong",
        "basic-malformed",
        "unknown-scheme",
    ],
)
async def test_bad_credentials_get_401_and_nothing_is_enqueued(
    client: TestClient[Any, Any], redis_client: redis.Redis, headers: dict[str, str]
) -> None:
    response = await client.post("/webhooks", data=PAYLOAD, headers=headers)
    assert response.status == 401
    challenge = response.headers["WWW-Authenticate"]
    assert "Bearer" in challenge and "HMAC-SHA256" in challenge and "Basic" in challenge
    assert queued(redis_client) == []


@pytest.mark.parametrize(
    "body,content_type,status",
    [
        (b"[1, 2]", "application/json", 400),
        (b"not json", "application/json", 400),
        (b'"text"', "application/json", 400),
        (b"\xff\xfe{}", "application/json", 400),
        (b"{}", "text/plain", 415),
        (b"{}", "application/x-www-form-urlencoded", 415),
    ],
)
async def test_bad_bodies_get_4xx(
    client: TestClient[Any, Any],
    redis_client: redis.Redis,
    body: bytes,
    content_type: str,
    status: int,
) -> None:
    headers = {**rh.bearer(), "Content-Type": content_type}
    response = await client.post("/webhooks", data=body, headers=headers)
    assert response.status == status
    assert "reason" in await response.json()
    assert queued(redis_client) == []


async def test_charset_parameter_is_allowed(client: TestClient[Any, Any]) -> None:
    headers = {**rh.bearer(), "Content-Type": "application/json; charset=utf-8"}
    response = await client.post("/webhooks", data=PAYLOAD, headers=headers)
    assert response.status == 202


async def test_body_over_the_limit_is_413(
    aiohttp_client: ClientFactory, queue_url: str, redis_client: redis.Redis
) -> None:
    client = await aiohttp_client(create_app(rh.settings(queue_url, max_body_bytes=1000)))
    big = samples.body({"cfRef": "x" * 2000})
    response = await client.post("/webhooks", data=big, headers=rh.bearer())
    assert response.status == 413

    async def chunks() -> Any:  # no Content-Length: the limit still holds
        for _ in range(10):
            yield b" " * 500

    response = await client.post("/webhooks", data=chunks(), headers=rh.bearer())
    assert response.status == 413
    assert queued(redis_client) == []


async def test_health_and_metrics(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    await client.post("/webhooks", data=PAYLOAD, headers=rh.bearer())
    text = await (await client.get("/metrics")).text()
    assert 'casefetch_receiver_requests_total{route="/webhooks",status="202"} 1.0' in text


async def test_metrics_on_a_port_of_their_own(
    aiohttp_client: ClientFactory, queue_url: str, redis_client: redis.Redis
) -> None:
    """RECEIVER_METRICS_PORT: /metrics is served there only, the public port answers 404."""
    port = free_port()
    client = await aiohttp_client(create_app(rh.settings(queue_url, metrics_port=port)))
    assert (await client.post("/webhooks", data=PAYLOAD, headers=rh.bearer())).status == 202
    assert (await client.get("/metrics")).status == 404
    assert (await client.get("/healthz")).status == 200
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
        async with session.get("/metrics") as response:
            assert response.status == 200
            text = await response.text()
        async with session.post("/webhooks", data=PAYLOAD, headers=rh.bearer()) as refused:
            assert refused.status == 404
    assert 'casefetch_receiver_requests_total{route="/webhooks",status="202"} 1.0' in text
    assert 'casefetch_receiver_requests_total{route="unmatched",status="404"} 1.0' in text
    assert len(queued(redis_client)) == 1
    await client.close()  # the metrics port closes with the receiver
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


async def test_redis_down_answers_503_promptly(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    client = await aiohttp_client(create_app(rh.settings(server.url)))
    assert (await client.post("/webhooks", data=PAYLOAD, headers=rh.bearer())).status == 202
    server.stop()
    started = time.monotonic()
    response = await client.post("/webhooks", data=PAYLOAD, headers=rh.bearer())
    assert response.status == 503
    assert int(response.headers["Retry-After"]) > 0
    assert (await client.get("/readyz")).status == 503
    assert time.monotonic() - started < 5
    server.start()  # same port, same data: what was accepted before the outage is there
    assert len(redis.Redis.from_url(server.url).lrange(INGEST_QUEUE, 0, -1)) == 1
    assert (await client.get("/readyz")).status == 200
    assert (await client.post("/webhooks", data=PAYLOAD, headers=rh.bearer())).status == 202
    server.stop()


async def test_unknown_paths_and_methods_are_answered_and_counted(
    client: TestClient[Any, Any],
) -> None:
    missing = await client.get("/nowhere/at/all")
    assert missing.status == 404
    wrong_method = await client.get("/webhooks")
    assert wrong_method.status == 405 and wrong_method.headers["Allow"] == "POST"
    not_a_post = await client.post("/healthz", data=b"{}")
    assert not_a_post.status == 405 and set(not_a_post.headers["Allow"].split(",")) >= {"GET"}
    metrics = await (await client.get("/metrics")).text()
    assert 'casefetch_receiver_requests_total{route="unmatched",status="404"} 1.0' in metrics
    assert 'casefetch_receiver_requests_total{route="unmatched",status="405"} 2.0' in metrics
