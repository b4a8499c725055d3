"""casefetch's Redis clients under Sentinel: each finds the primary through the sentinels and
follows a failover without a restart (real redis-server and redis-sentinel processes)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from casefetch.constants import INBOX_KEY
from receiver import create_app
from receiver.enqueue import Enqueuer
from tests import receiver_helpers as rh
from tests.processes import CASEFETCH
from tests.sentinels import SentinelGroup
from tests.waiting import wait_for

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

pytestmark = pytest.mark.slow


def test_the_worker_s_client_follows_a_failover(sentinels: SentinelGroup) -> None:
    client = sentinels.target().client(socket_timeout=2, socket_connect_timeout=1)
    first = sentinels.primary()
    client.set("before", "1")
    with redis.Redis(port=first.port) as direct:
        assert direct.get("before") == b"1"
    sentinels.kill_primary()
    second = sentinels.wait_for_promotion(first)
    client.set("after", "1")  # redis-py's retry reconnects, asking the sentinels again
    with redis.Redis(port=second.port) as direct:
        assert direct.get("after") == b"1" and direct.get("before") == b"1"
    client.close()


def test_a_cli_command_reaches_redis_through_the_sentinels(
    sentinels: SentinelGroup, tmp_path: Path
) -> None:
    result = subprocess.run(
        [*CASEFETCH, "quarantine", "list", "--json"],
        env={"PATH": "/usr/bin:/bin", **sentinels.env(), "ARCHIVE_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


async def post(client: TestClient[Any, Any]) -> tuple[int, str | None]:
    """The answer's status, and its deliveryId (202) or Retry-After (503)."""
    response = await client.post("/webhooks", data=b'{"cfRef": "CF-HA"}', headers=rh.bearer())
    answer = await response.json()
    if response.status == 202:
        return 202, answer["deliveryId"]
    return response.status, response.headers.get("Retry-After")


def in_inbox(port: int, delivery_ids: list[str]) -> bool:
    with redis.Redis(port=port) as client:
        return all(client.hexists(INBOX_KEY, delivery_id) for delivery_id in delivery_ids)


async def test_the_receiver_follows_a_failover_without_a_restart(
    sentinels: SentinelGroup, aiohttp_client: ClientFactory, report_line: Callable[[str], None]
) -> None:
    """Two receivers on the same sentinels: one waits for a replica (REDIS_MIN_REPLICAS_ACK=1),
    one does not (0)."""
    target = sentinels.target()
    settings = rh.settings("", redis=target, redis_timeout_seconds=1.0)
    unreplicated = await aiohttp_client(create_app(settings))
    acknowledged = await aiohttp_client(
        create_app(rh.settings("", redis=target, redis_timeout_seconds=1.0, min_replicas_ack=1))
    )
    accepted = []
    for _ in range(3):
        status, delivery_id = await post(acknowledged)
        assert status == 202 and delivery_id
        accepted.append(delivery_id)
    assert (await post(unreplicated))[0] == 202

    old = sentinels.kill_primary()
    killed = time.monotonic()
    for client in (unreplicated, acknowledged):
        assert await post(client) == (503, "5")  # never 202 while there is no primary
    new = await asyncio.to_thread(sentinels.wait_for_promotion, old)
    promoted = time.monotonic()
    status, delivery_id = await post(unreplicated)  # no restart, not even a retry
    answered = time.monotonic()
    assert status == 202 and delivery_id and in_inbox(new.port, [delivery_id])
    # Every delivery the acknowledged receiver answered 202 was on the replica now primary.
    assert in_inbox(new.port, accepted)
    # Until the new primary has a replica, the acknowledged receiver answers 503.
    assert await post(acknowledged) == (503, "5")

    old.start()  # the sentinels make it a replica of the new primary
    with redis.Redis(port=new.port) as client:
        wait_for(lambda: client.info("replication").get("slave0", {}).get("state") == "online", 60)
    status, delivery_id = await post(acknowledged)
    assert status == 202 and delivery_id and in_inbox(old.port, [delivery_id])
    report_line(
        f"sentinel failover: replica promoted {promoted - killed:.1f} s after the primary's "
        f"SIGKILL; the receiver's next request answered 202 in "
        f"{(answered - promoted) * 1000:.0f} ms, without a restart"
    )


async def test_with_two_replicas_202s_resume_once_one_is_promoted(
    tmp_path: Path, aiohttp_client: ClientFactory, report_line: Callable[[str], None]
) -> None:
    """With REDIS_MIN_REPLICAS_ACK=1 and one replica, a failover leaves no replica to
    acknowledge until the old primary is back (above); with two, the one not promoted
    follows the new primary and the 202s resume without it."""
    group = SentinelGroup(tmp_path / "sentinel", replicas=2).start()
    try:
        settings = rh.settings(
            "", redis=group.target(), redis_timeout_seconds=1.0, min_replicas_ack=1
        )
        client = await aiohttp_client(create_app(settings))
        status, before = await post(client)
        assert status == 202 and before
        old = group.kill_primary()
        killed = time.monotonic()
        new = await asyncio.to_thread(group.wait_for_promotion, old)
        promoted = time.monotonic()

        async def accepted() -> str | None:
            status, delivery_id = await post(client)
            return delivery_id if status == 202 else None

        after = None
        while after is None and time.monotonic() < promoted + 30:
            after = await accepted()
        answered = time.monotonic()
        assert after, "no 202 within 30 s of the promotion"
        assert in_inbox(new.port, [before, after])
        (replica,) = (s for s in group.servers if s not in (old, new))
        assert in_inbox(replica.port, [before, after])  # WAIT: it holds what was accepted
        report_line(
            f"sentinel failover, two replicas, REDIS_MIN_REPLICAS_ACK=1: promoted "
            f"{promoted - killed:.1f} s after the SIGKILL, the first 202 "
            f"{answered - killed:.1f} s after it (the other replica following the new primary)"
        )
    finally:
        group.stop()


async def test_the_receiver_leaves_a_primary_gone_silent(
    sentinels: SentinelGroup, aiohttp_client: ClientFactory
) -> None:
    """A primary that stops answering without closing its connections (a partition, a host
    gone), here SIGSTOPped: a late reply sends the receiver back to the sentinels."""
    target = sentinels.target()
    client = await aiohttp_client(
        create_app(rh.settings("", redis=target, redis_timeout_seconds=1.0))
    )
    assert (await post(client))[0] == 202
    old = sentinels.primary()
    assert old.process is not None
    old.process.send_signal(signal.SIGSTOP)
    try:
        assert await post(client) == (503, "5")
        new = await asyncio.to_thread(sentinels.wait_for_promotion, old)
        status, delivery_id = await post(client)
        assert status == 202 and delivery_id and in_inbox(new.port, [delivery_id])
    finally:
        old.process.send_signal(signal.SIGCONT)


def test_the_receiver_uses_the_pipe_under_sentinel(sentinels: SentinelGroup) -> None:
    assert Enqueuer.to(sentinels.target(), 1.0).pipe is not None
