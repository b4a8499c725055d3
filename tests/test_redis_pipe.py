"""The receiver's pipelined Redis connection, against a real redis-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from casefetch.constants import INBOX_INDEX_KEY, INBOX_KEY, INGEST_QUEUE
from casefetch.protocol import enqueue_commands, inbox_entry, make_delivery
from casefetch.redis_target import RedisTarget
from casefetch_tools.redis_server import RedisServer, free_port
from receiver.enqueue import Enqueuer
from receiver.redis_pipe import RedisPipe
from tests.sentinels import replicate


async def test_concurrent_pushes_each_get_their_own_reply(redis_server: RedisServer) -> None:
    url = redis_server.db_url(5)
    client = redis.Redis.from_url(url)
    client.delete("pipe-test")
    pipe = RedisPipe.from_url(url)
    try:
        lengths = await asyncio.gather(*(pipe.lpush("pipe-test", b"v%d" % i) for i in range(200)))
        assert sorted(n for n in lengths if isinstance(n, int)) == list(range(1, 201))
        assert client.llen("pipe-test") == 200
        big = b"\xff" * (3 * 1024 * 1024)
        assert await pipe.lpush("pipe-test", big) == 201
        assert client.lindex("pipe-test", 0) == big
        assert await pipe.ping()
    finally:
        await pipe.close()
        client.delete("pipe-test")
        client.close()


async def test_error_replies_are_raised_and_the_connection_goes_on(
    redis_server: RedisServer,
) -> None:
    url = redis_server.db_url(5)
    client = redis.Redis.from_url(url)
    client.set("pipe-string", "x")
    pipe = RedisPipe.from_url(url)
    try:
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await pipe.lpush("pipe-string", b"v")
        assert await pipe.execute(b"GET", b"pipe-string") == b"x"
        assert await pipe.execute(b"GET", b"pipe-missing") is None
    finally:
        await pipe.close()
        client.delete("pipe-string")
        client.close()


async def test_lost_connection_fails_waiters_and_reconnects(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    pipe = RedisPipe.from_url(server.url)
    try:
        assert await pipe.lpush("q", b"1") == 1
        server.stop()
        with pytest.raises(RedisConnectionError):
            await pipe.lpush("q", b"2")
        server.start()
        assert await pipe.lpush("q", b"3") == 2  # the first write survived the restart
    finally:
        await pipe.close()
        server.stop()


async def test_nothing_listening_is_a_connection_error() -> None:
    pipe = RedisPipe.from_url(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(RedisConnectionError):
        await pipe.ping()
    await pipe.close()


async def test_password_and_database_are_used(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url)
    try:
        client.config_set("requirepass", "s3cret")
        base = f"redis://:s3cret@127.0.0.1:{server.port}"
        pipe = RedisPipe.from_url(f"{base}/2")
        assert await pipe.lpush("q", b"x") == 1
        await pipe.close()
        checker = redis.Redis.from_url(f"{base}/2")
        assert checker.llen("q") == 1
        checker.close()
        wrong = RedisPipe.from_url(f"redis://:nope@127.0.0.1:{server.port}/0")
        with pytest.raises(ResponseError):
            await wrong.ping()
        await wrong.close()
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize(
    ("url", "supported"),
    [
        ("redis://localhost:6379/0", True),
        ("redis://h", True),
        ("redis://:p@h:1/3", True),
        ("rediss://h:6380/0", False),
        ("unix:///tmp/r.sock", False),
        ("redis://h/0?socket_timeout=3", False),
    ],
)
def test_only_plain_urls_are_taken(url: str, supported: bool) -> None:
    assert RedisPipe.supports(url) is supported


async def test_a_redis_that_never_answers_costs_a_timeout_not_a_hang() -> None:
    from receiver.enqueue import EnqueueError, Enqueuer

    accepted: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read(-1)  # takes every byte, answers nothing

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    enqueuer = Enqueuer.to(RedisTarget(f"redis://127.0.0.1:{port}/0"), timeout_seconds=0.3)
    assert enqueuer.pipe is not None
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(EnqueueError):
            await enqueuer.enqueue(
                {"deliveryId": "d-1", "receivedAt": "x", "body": "{}", "headers": {}}
            )
        assert not await enqueuer.ping()
        assert asyncio.get_running_loop().time() - started < 2
    finally:
        await enqueuer.close()
        server.close()
        for writer in accepted:  # the server's side of each connection (3.11 leaves them)
            writer.close()
        await server.wait_closed()


async def test_a_late_reply_times_out_its_command_only(redis_server: RedisServer) -> None:
    pipe = RedisPipe.from_url(redis_server.db_url(5))
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        # WAIT (for a replica there is not) holds its reply for a second: the command's own
        # timeout fires first.
        with pytest.raises(TimeoutError):
            await pipe.execute(b"WAIT", b"1", b"1000", timeout=0.1)
        assert loop.time() - started < 0.9
        # Its late reply still lands in its place, so the next command gets its own.
        assert await pipe.ping(timeout=5)
        assert await pipe.execute(b"ECHO", b"mine", timeout=5) == b"mine"
    finally:
        await pipe.close()


async def test_a_transaction_is_answered_by_its_exec(redis_server: RedisServer) -> None:
    url = redis_server.db_url(5)
    client = redis.Redis.from_url(url)
    client.delete("pipe-tx", "pipe-tx-hash")
    client.set("pipe-tx-string", "x")
    pipe = RedisPipe.from_url(url)
    try:
        # Concurrent transactions and plain commands each get their own replies.
        results = await asyncio.gather(
            *(
                pipe.transaction(
                    (b"LPUSH", b"pipe-tx", b"v%d" % i),
                    (b"HSET", b"pipe-tx-hash", b"k%d" % i, b"v%d" % i),
                )
                if i % 2
                else pipe.execute(b"ECHO", b"e%d" % i)
                for i in range(100)
            )
        )
        for i, result in enumerate(results):
            assert result == ([i // 2 + 1, 1] if i % 2 else b"e%d" % i)
        assert client.llen("pipe-tx") == 50 and client.hlen("pipe-tx-hash") == 50
        # A command that fails inside the transaction is raised (the others ran: Redis does
        # not roll back), and one refused while queueing aborts all of it.
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await pipe.transaction(
                (b"LPUSH", b"pipe-tx-string", b"v"), (b"LPUSH", b"pipe-tx", b"w")
            )
        with pytest.raises(ResponseError, match="EXECABORT"):
            await pipe.transaction((b"LPUSH", b"pipe-tx"), (b"LPUSH", b"pipe-tx", b"never"))
        assert client.lrange("pipe-tx", 0, 0) == [b"w"]
        assert await pipe.ping()
    finally:
        await pipe.close()
        client.delete("pipe-tx", "pipe-tx-hash", "pipe-tx-string")
        client.close()


async def test_the_pipe_and_redis_py_write_the_same_enqueue(redis_server: RedisServer) -> None:
    url = redis_server.db_url(6)
    client = redis.Redis.from_url(url)
    pipe = RedisPipe.from_url(url)
    commands = enqueue_commands(b"m\xff", b"e\xfe", "d-1", 12.5)
    keys = (INGEST_QUEUE, INBOX_KEY, INBOX_INDEX_KEY)
    try:
        client.flushdb()
        transaction = client.pipeline(transaction=True)
        for command in commands:
            # redis-py leaves Pipeline.execute_command unannotated.
            transaction.execute_command(*command)  # type: ignore[no-untyped-call]
        transaction.execute()
        by_redis_py = {key: client.dump(key) for key in keys}
        assert all(by_redis_py.values())
        client.flushdb()
        await pipe.transaction(*commands)
        assert {key: client.dump(key) for key in keys} == by_redis_py
    finally:
        await pipe.close()
        client.flushdb()
        client.close()


async def test_the_receiver_enqueues_through_redis_py_where_the_pipe_cannot(
    redis_server: RedisServer,
) -> None:
    url = redis_server.db_url(6)
    client = redis.Redis.from_url(url)
    enqueuer = Enqueuer(aioredis.Redis.from_url(url), timeout_seconds=5.0)  # no pipe
    delivery = make_delivery(b'{"cfRef": "CF-1"}', {"Content-Type": "application/json"})
    try:
        client.flushdb()
        await enqueuer.enqueue(delivery)
        assert client.llen(INGEST_QUEUE) == 1
        assert client.hget(INBOX_KEY, delivery["deliveryId"]) == inbox_entry(delivery)
        assert client.zscore(INBOX_INDEX_KEY, delivery["deliveryId"]) is not None
    finally:
        await enqueuer.close()
        client.flushdb()
        client.close()


class StandInSentinel:
    """A server that answers ``SENTINEL get-master-addr-by-name`` with the address it is given,
    as a sentinel with a stale view would, and keeps the commands it was sent."""

    def __init__(self, primary: RedisServer) -> None:
        self.port = primary.port
        self.commands: list[list[bytes]] = []
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return "127.0.0.1", self.server.sockets[0].getsockname()[1]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        while header := await reader.readline():
            command = []
            for _ in range(int(header[1:])):
                length = int((await reader.readline())[1:])
                command.append((await reader.readexactly(length + 2))[:-2])
            self.commands.append(command)
            if command[0] == b"AUTH":
                writer.write(b"+OK\r\n")
            else:
                port = str(self.port).encode()
                writer.write(b"*2\r\n$9\r\n127.0.0.1\r\n$%d\r\n%s\r\n" % (len(port), port))

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


def sentinel_pipe(*sentinels: tuple[str, int], password: str | None = None) -> RedisPipe:
    url = ";".join(f"sentinel://{host}:{port}/0" for host, port in sentinels)
    target = RedisTarget.parse(url, "casefetch-primary", password)
    pipe = RedisPipe.for_target(target, connect_timeout=1.0)
    assert pipe is not None
    return pipe


async def test_the_sentinels_are_asked_in_order_for_the_primary(
    replicated: tuple[RedisServer, RedisServer],
) -> None:
    primary, _ = replicated
    sentinel = StandInSentinel(primary)
    nobody = ("127.0.0.1", free_port())
    pipe = sentinel_pipe(nobody, await sentinel.start(), password="sentinel-secret")
    try:
        assert await pipe.transaction((b"LPUSH", b"q", b"1")) == [1]
        assert sentinel.commands == [
            [b"AUTH", b"sentinel-secret"],
            [b"SENTINEL", b"get-master-addr-by-name", b"casefetch-primary"],
        ]
        with redis.Redis(port=primary.port) as client:
            assert client.llen("q") == 1
    finally:
        await pipe.close()
        await sentinel.close()


async def test_a_replica_named_as_the_primary_is_refused(
    replicated: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = replicated
    with redis.Redis(port=replica.port) as client:
        client.config_set("replica-read-only", "no")  # it would take the write, and lose it
    sentinel = StandInSentinel(replica)
    pipe = sentinel_pipe(await sentinel.start())
    try:
        with pytest.raises(RedisConnectionError, match="is not a primary"):
            await pipe.transaction((b"LPUSH", b"q", b"lost"))
        sentinel.port = primary.port  # the sentinels caught up: the next connection asks again
        assert await pipe.transaction((b"LPUSH", b"q", b"kept")) == [1]
        with redis.Redis(port=primary.port) as client:
            assert client.lrange("q", 0, -1) == [b"kept"]
    finally:
        await pipe.close()
        await sentinel.close()


async def test_a_demoted_primary_sends_the_pipe_back_to_the_sentinels(
    replicated: tuple[RedisServer, RedisServer],
) -> None:
    old, new = replicated
    sentinel = StandInSentinel(old)
    pipe = sentinel_pipe(await sentinel.start())
    try:
        assert await pipe.transaction((b"LPUSH", b"q", b"1")) == [1]
        # A failover the pipe's connection survives: the old primary answers -READONLY.
        with redis.Redis(port=new.port) as client:
            client.replicaof("NO", "ONE")
        replicate(old, new)
        sentinel.port = new.port
        with pytest.raises(ResponseError, match="EXECABORT"):
            await pipe.transaction((b"LPUSH", b"q", b"2"))
        assert await pipe.transaction((b"LPUSH", b"q", b"3")) == [2]
        with redis.Redis(port=new.port) as client:
            assert client.lrange("q", 0, -1) == [b"3", b"1"]
    finally:
        await pipe.close()
        await sentinel.close()
