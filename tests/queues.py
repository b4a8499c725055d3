"""Queued Celery messages as kombu keeps them in Redis: raw bytes in a list."""

from __future__ import annotations

import redis


def take_message(client: redis.Redis, queue: str, delivery_id: str) -> bytes:
    """Take the message carrying ``delivery_id`` out of ``queue``, as a worker that popped it
    (and holds it, or died before kombu noted it) would; return it."""
    [raw] = [
        m for m in client.lrange(queue, 0, -1) if isinstance(m, bytes) and delivery_id.encode() in m
    ]
    # redis-py types lrem's value as str; Redis takes the bytes the list holds.
    assert client.lrem(queue, 1, raw) == 1  # type: ignore[arg-type]
    return raw
