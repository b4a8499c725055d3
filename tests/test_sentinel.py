"""casefetch's Redis clients under Sentinel: each finds the primary through the sentinels and
follows a failover without a restart (real redis-server and redis-sentinel processes)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis

from tests.processes import CASEFETCH
from tests.sentinels import SentinelGroup

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
