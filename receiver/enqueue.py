"""The enqueue path: one Redis round trip, acknowledged before the receiver answers 2xx.

It queues the message (the delivery's reference) and keeps the delivery in the inbox
(:data:`casefetch.constants.INBOX_KEY`) in one atomic step: the MULTI/EXEC transaction of
:func:`casefetch.protocol.enqueue_commands`, through the pipe or through redis-py. With
replicas to wait for (REDIS_MIN_REPLICAS_ACK), Redis's ``WAIT`` follows on the same
connection, and the write counts as taken only once enough replicas hold it.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from casefetch.protocol import (
    Delivery,
    enqueue_commands,
    inbox_entry,
    ingest_message,
)
from casefetch.redis_target import RedisTarget
from receiver.redis_pipe import RedisPipe, TooFewReplicas, online_replicas, wait_milliseconds


class EnqueueError(Exception):
    """Redis did not take the payload; the sender must try again later."""


class Enqueuer:
    """Writes deliveries to the ingest queue as Celery task messages.

    Through a :class:`RedisPipe` when the target allows (it costs a fraction of redis-py per
    command; plain URLs and Sentinel), else through redis-py (TLS, Unix sockets, URL options).
    """

    def __init__(
        self,
        redis: aioredis.Redis | RedisPipe,
        timeout_seconds: float,
        min_replicas_ack: int = 0,
    ) -> None:
        self.redis = redis
        self.timeout_seconds = timeout_seconds
        self.min_replicas_ack = min_replicas_ack

    @classmethod
    def to(cls, target: RedisTarget, timeout_seconds: float, min_replicas_ack: int = 0) -> Enqueuer:
        connect_timeout = min(timeout_seconds, 2.0)
        pipe = RedisPipe.for_target(target, connect_timeout)
        if pipe is not None:
            return cls(pipe, timeout_seconds, min_replicas_ack)
        client = target.async_client(
            socket_timeout=timeout_seconds,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 1),
            max_connections=256,
        )
        return cls(client, timeout_seconds, min_replicas_ack)

    @property
    def pipe(self) -> RedisPipe | None:
        return self.redis if isinstance(self.redis, RedisPipe) else None

    async def enqueue(self, delivery: Delivery) -> None:
        message, entry = ingest_message(delivery), inbox_entry(delivery)
        commands = enqueue_commands(message, entry, delivery["deliveryId"], time.time())
        redis = self.redis
        try:
            if isinstance(redis, RedisPipe):  # it times out itself, for less than a Timeout
                await redis.transaction(
                    *commands, timeout=self.timeout_seconds, replicas=self.min_replicas_ack
                )
            else:
                async with asyncio.timeout(self.timeout_seconds):
                    await self._enqueue_with_redis_py(redis, commands)
        except (RedisError, OSError, TimeoutError) as exc:
            raise EnqueueError(f"{type(exc).__name__}: {exc}") from exc

    async def _enqueue_with_redis_py(
        self, redis: aioredis.Redis, commands: tuple[tuple[bytes, ...], ...]
    ) -> None:
        replicas = self.min_replicas_ack
        if not replicas:
            async with redis.pipeline(transaction=True) as transaction:
                for command in commands:
                    transaction.execute_command(*command)
                await transaction.execute()
            return
        # WAIT counts the writes of its own connection: MULTI ... EXEC WAIT go down one, in a
        # pipeline that is not itself a transaction. Commands named in bytes get no redis-py
        # reply parsing, the replies come as Redis sent them.
        milliseconds = wait_milliseconds(self.timeout_seconds)
        async with redis.pipeline(transaction=False) as pipeline:
            pipeline.execute_command(b"MULTI")
            for command in commands:
                pipeline.execute_command(*command)
            pipeline.execute_command(b"EXEC")
            pipeline.execute_command(b"WAIT", replicas, milliseconds)
            replies = await pipeline.execute()
        executed, acknowledged = replies[-2], replies[-1]
        for reply in executed if isinstance(executed, list) else [executed]:
            if isinstance(reply, Exception):
                raise reply
        if not isinstance(acknowledged, int) or acknowledged < replicas:
            raise TooFewReplicas(acknowledged if isinstance(acknowledged, int) else 0, replicas)

    async def ping(self) -> bool:
        """Whether Redis answers (and, with replicas to wait for, has enough of them)."""
        redis = self.redis
        try:
            if isinstance(redis, RedisPipe):
                if self.min_replicas_ack:
                    return await redis.replicas(self.timeout_seconds) >= self.min_replicas_ack
                return await redis.ping(self.timeout_seconds)
            async with asyncio.timeout(self.timeout_seconds):
                if self.min_replicas_ack:
                    # Named in bytes: the reply as Redis sent it, not redis-py's dict.
                    info = await redis.execute_command(  # type: ignore[no-untyped-call]
                        b"INFO", b"replication"
                    )
                    return online_replicas(info.decode()) >= self.min_replicas_ack
                return bool(await redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        if isinstance(self.redis, RedisPipe):
            await self.redis.close()
        else:
            await self.redis.aclose()
