"""Redis under Sentinel, as the tests run it: a primary, a replica and three sentinels, real
processes on loopback ports (Debian's redis-server and redis-sentinel)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import redis

from casefetch.redis_target import RedisTarget
from casefetch_tools.redis_server import RedisServer, free_port
from tests.waiting import wait_for

MASTER = "casefetch-primary"
#: How long the sentinels wait before they call a silent primary down.
DOWN_AFTER_MS = 1000
#: Written and deleted to see a new replica acknowledge a write.
PROBE_KEY = "tests:replication-probe"


def replicate(replica: RedisServer, primary: RedisServer, replicas: int = 1) -> None:
    """Make ``replica`` a replica of ``primary`` (its ``replicas``-th); return once that many
    acknowledge writes (a fresh replica may take a second more for its first acknowledgement
    than "in sync" says)."""
    with redis.Redis(port=primary.port) as client:  # not Redis's 5 s wait for more replicas
        client.config_set("repl-diskless-sync-delay", 0)
    with redis.Redis(port=replica.port) as client:
        client.replicaof("127.0.0.1", primary.port)
    with redis.Redis(port=primary.port) as client:
        client.set(PROBE_KEY, "1")
        acknowledged = client.wait(replicas, 10_000)
        client.delete(PROBE_KEY)
        caught_up = acknowledged >= replicas and client.wait(replicas, 10_000) >= replicas
        assert caught_up, "the replica never caught up"


class SentinelGroup:
    """A primary and its ``replicas`` (one by default) watched by three sentinels (quorum 2)."""

    def __init__(self, directory: Path, replicas: int = 1) -> None:
        self.directory = directory
        self.replicas = replicas
        self.servers = [
            RedisServer(directory / name, appendfsync="everysec")
            for name in "abcdefgh"[: 1 + replicas]
        ]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    def start(self) -> SentinelGroup:
        binary = shutil.which("redis-sentinel")
        assert binary, "redis-sentinel is not on PATH (apt-get install redis-sentinel)"
        primary, *replicas = (server.start() for server in self.servers)
        for count, replica in enumerate(replicas, 1):
            replicate(replica, primary, count)
        for port in self.sentinel_ports:
            config = self.directory / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.directory}\n"
                f"logfile {self.directory / f'sentinel-{port}.log'}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER} 10000\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    [binary, str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        # Ready once every sentinel knows the replica and the two other sentinels.
        for port in self.sentinel_ports:
            with redis.Redis(port=port) as sentinel:
                wait_for(lambda s=sentinel: self._knows_everyone(s), 15)  # type: ignore[misc]
        return self

    def _knows_everyone(self, sentinel: redis.Redis) -> bool:
        try:
            replicas = sentinel.sentinel_slaves(MASTER)
            others = sentinel.sentinel_sentinels(MASTER)
        except redis.RedisError:
            return False
        # redis-py types both replies as ``list | bool``.
        every_replica = isinstance(replicas, list) and len(replicas) == self.replicas
        return every_replica and isinstance(others, list) and len(others) == 2

    @property
    def url(self) -> str:
        return self.db_url(0)

    def db_url(self, db: int) -> str:
        """REDIS_URL in its Sentinel form, for database ``db``."""
        return ";".join(f"sentinel://127.0.0.1:{port}/{db}" for port in self.sentinel_ports)

    def target(self, db: int = 0) -> RedisTarget:
        return RedisTarget.parse(self.db_url(db), MASTER)

    def env(self, db: int = 0) -> dict[str, str]:
        """The settings that point casefetch at this group."""
        return {"REDIS_URL": self.db_url(db), "REDIS_SENTINEL_MASTER": MASTER}

    def primary(self) -> RedisServer:
        """The server the sentinels name as primary now."""
        with redis.Redis(port=self.sentinel_ports[0]) as sentinel:
            _, port = sentinel.sentinel_get_master_addr_by_name(MASTER)
        return next(server for server in self.servers if server.port == int(port))

    def kill_primary(self) -> RedisServer:
        """SIGKILL the primary; returns it (dead)."""
        primary = self.primary()
        primary.kill()
        return primary

    def wait_for_promotion(self, old: RedisServer, timeout: float = 30) -> RedisServer:
        """Wait until every sentinel names another primary than ``old``, and it takes writes."""

        def promoted() -> bool:
            for port in self.sentinel_ports:
                with redis.Redis(port=port) as sentinel:
                    _, primary_port = sentinel.sentinel_get_master_addr_by_name(MASTER)
                if int(primary_port) == old.port:
                    return False
            with redis.Redis(port=int(primary_port)) as client:
                return bool(client.info("replication")["role"] == "master")

        wait_for(promoted, timeout)
        return self.primary()

    def stop(self) -> None:
        for process in self.sentinels:
            process.kill()
            process.wait()
        self.sentinels.clear()
        for server in self.servers:
            server.stop()
