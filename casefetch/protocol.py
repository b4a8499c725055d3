"""The message the receiver writes and the worker consumes.

The receiver does not go through Celery to enqueue: Celery's publisher is synchronous and
costs more than the rest of the request. Instead it writes, in one MULTI/EXEC, exactly the
message a stock Celery worker reads from kombu's Redis transport (task protocol 2, JSON
serialiser, base64 body) and the delivery itself into the inbox
(:data:`casefetch.constants.INBOX_KEY`), where it stays until a worker has archived or
quarantined it. The message carries only the delivery's reference (:func:`delivery_ref`):
the payload is written to Redis once, not twice (and not base64-encoded), which is what
Redis and the receiver spent most on. ``tests/test_pipeline.py`` proves a real worker
consumes what the real receiver wrote.

A *delivery* is one accepted webhook request::

    {"deliveryId": str, "receivedAt": ISO 8601, "body": str | None,
     "bodyBase64": str | None, "headers": {name: value}}

``body`` is the raw request body as text; ``bodyBase64`` replaces it when the bytes are not
UTF-8 (quarantine replays may carry such bodies).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

from casefetch import codec
from casefetch.constants import (
    CREDENTIAL_HEADERS,
    INBOX_INDEX_KEY,
    INBOX_KEY,
    INGEST_QUEUE,
    INGEST_TASK,
)

_ORIGIN = f"casefetch-receiver@{socket.gethostname()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class Delivery(TypedDict, total=False):
    deliveryId: str
    receivedAt: str
    body: str | None
    bodyBase64: str | None
    headers: dict[str, str]


def enqueue_commands(
    message: bytes, entry: bytes, delivery_id: str, now: float
) -> tuple[tuple[bytes, ...], ...]:
    """Queue a delivery's message and keep the delivery in the inbox: the commands to run in
    one MULTI/EXEC, atomically and in one round trip, by the receiver and by a replay. A
    transaction rather than a script: Redis spends less on it (no copy of the payload into Lua
    and back)."""
    member = delivery_id.encode()
    return (
        (b"LPUSH", INGEST_QUEUE.encode(), message),
        (b"HSET", INBOX_KEY.encode(), member, entry),
        (b"ZADD", INBOX_INDEX_KEY.encode(), b"%f" % now, member),
    )


def ingest_message(delivery: Mapping[str, Any], origin: str | None = None) -> bytes:
    """The ingest task's message for a delivery kept in the inbox: its reference only."""
    return task_message(
        INGEST_TASK,
        INGEST_QUEUE,
        [delivery_ref(delivery)],
        task_id=str(delivery["deliveryId"]),
        origin=origin or _ORIGIN,
    )


def delivery_ref(delivery: Mapping[str, Any]) -> dict[str, str]:
    """What the ingest message carries: the worker reads the rest from the inbox."""
    return {
        "deliveryId": str(delivery["deliveryId"]),
        "receivedAt": str(delivery.get("receivedAt") or ""),
    }


def inbox_entry(delivery: Delivery) -> bytes:
    """A delivery as the inbox keeps it."""
    return codec.compact(delivery)


def delivery_from_inbox(delivery_id: str, entry: bytes) -> Delivery:
    """The delivery an inbox entry holds. An entry that cannot be read is kept as the body of
    a delivery (bodyBase64), which the worker quarantines: nothing accepted is dropped.
    """
    try:
        value = json.loads(entry)
    except ValueError:
        value = None
    if isinstance(value, dict) and value.get("deliveryId") == delivery_id:
        delivery: Delivery = value  # type: ignore[assignment]
        return delivery
    return {
        "deliveryId": delivery_id,
        "receivedAt": "",
        "headers": {},
        "bodyBase64": base64.b64encode(entry).decode("ascii"),
    }


def _uuid_text(value: int) -> str:
    # str(uuid.UUID(int=...)) costs three times as much, on the receiver's hot path.
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_last_id = 0


def new_delivery_id(ms: int | None = None) -> str:
    """A UUID whose first 48 bits are the time in ms (the UUIDv7 layout): ids sort by arrival.

    Within one millisecond a process's ids still sort by arrival: the next id is the last
    one plus one (RFC 9562's monotonic random), so the receipt order of two deliveries for
    one cfRef is never left to chance (see :func:`accepted_before`).
    """
    global _last_id
    ms = time.time_ns() // 1_000_000 if ms is None else ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | (0x7 << 76) | (rand & ((1 << 76) - 1))
    value = (value & ~(0xC << 60)) | (0x8 << 60)  # RFC 4122 variant bits
    last = _last_id
    if value >> 80 == last >> 80 and value <= last and (last + 1) & _RAND_B == (last & _RAND_B) + 1:
        value = last + 1
    _last_id = value
    return _uuid_text(value)


#: The 62 random bits after the variant: incremented for ids of the same millisecond.
_RAND_B = (1 << 62) - 1


def accepted_before(first: str, second: str) -> bool:
    """Whether delivery ``first`` was accepted before delivery ``second``, as their ids say.

    Ids made by :func:`new_delivery_id` sort by the time they were accepted. An id that is
    not one of those (a test's, or from a receiver before ids were time-ordered) says
    nothing: False, and processing order decides, as it always did for such ids.
    """
    return _time_ordered(first) and _time_ordered(second) and first.lower() < second.lower()


def _time_ordered(delivery_id: str) -> bool:
    return len(delivery_id) == 36 and delivery_id[14] == "7" and delivery_id[8] == "-"


def _random_uuid() -> str:
    """A version-4 UUID, as ``str(uuid.uuid4())`` gives, for less."""
    value = int.from_bytes(os.urandom(16), "big")
    value = (value & ~(0xF << 76)) | (0x4 << 76)
    value = (value & ~(0xC << 60)) | (0x8 << 60)
    return _uuid_text(value)


@functools.lru_cache(maxsize=4)
def _utc_second(seconds: int) -> str:
    # The receiver stamps thousands of deliveries a second: strftime once for all of them.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def utc_iso(ms: int) -> str:
    """``2026-11-28T10:00:00.000Z`` for a time in milliseconds since the epoch."""
    seconds, millis = divmod(ms, 1000)
    return f"{_utc_second(seconds)}.{millis:03d}Z"


def utc_now_iso() -> str:
    return utc_iso(time.time_ns() // 1_000_000)


def safe_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The request headers worth keeping, without any credential."""
    kept: dict[str, str] = {}
    for name, value in headers:
        if name.lower() not in CREDENTIAL_HEADERS:
            # aiohttp's names are multidict.istr; a plain str keeps the fast JSON encoder.
            kept[str(name)] = value
    return kept


def make_delivery(
    body: bytes,
    headers: Mapping[str, str],
    delivery_id: str | None = None,
    received_at: str | None = None,
    text: str | None = None,
) -> Delivery:
    """``text``: the body decoded from UTF-8, when the caller has it already."""
    ms = time.time_ns() // 1_000_000
    delivery: Delivery = {
        "deliveryId": delivery_id or new_delivery_id(ms),
        "receivedAt": received_at or utc_iso(ms),
        "headers": dict(headers),
    }
    if text is not None:
        delivery["body"] = text
        return delivery
    try:
        delivery["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        delivery["bodyBase64"] = base64.b64encode(body).decode("ascii")
    return delivery


def delivery_body(delivery: Mapping[str, Any]) -> bytes:
    """The raw bytes of a delivery's body, exactly as received."""
    if delivery.get("body") is not None:
        return str(delivery["body"]).encode("utf-8")
    if delivery.get("bodyBase64") is not None:
        return base64.b64decode(str(delivery["bodyBase64"]))
    return b""


def peek_cf_ref(delivery: Delivery) -> str | None:
    """The cfRef a delivery announces, if it can be read (for logs only)."""
    try:
        payload = json.loads(delivery_body(delivery))
    except (ValueError, RecursionError):
        return None
    value = payload.get("cfRef") if isinstance(payload, dict) else None
    return value if isinstance(value, str) else None


def task_message(
    task: str, queue: str, args: list[Any], task_id: str | None = None, origin: str = _ORIGIN
) -> bytes:
    """Serialise a Celery task-protocol-2 message as kombu's Redis transport stores it.

    Push it with ``LPUSH <queue> <message>`` (kombu pops from the right: first in, first out).
    """
    task_id = task_id or str(uuid.uuid4())
    body = base64.b64encode(codec.compact([args, {}, _EMBED]))
    # The envelope is the same for every message but three values: it is serialised once, and
    # a message is its pieces joined around them: the base64 body is not scanned again
    # (docs/benchmarks.md#the-celery-message).
    values = {
        b"body": b'"' + body + b'"',
        b"id": codec.compact(task_id),
        b"tag": b'"' + _random_uuid().encode() + b'"',
    }
    parts = _envelope_parts(task, queue, origin)
    return b"".join(values[part] if i % 2 else part for i, part in enumerate(parts))


def _envelope(
    task: str, queue: str, task_id: str, body: str, delivery_tag: str, origin: str
) -> dict[str, Any]:
    return {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": "",
            "kwargsrepr": "{}",
            "origin": origin,
            "ignore_result": True,
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": delivery_tag,
        },
    }


_PLACEHOLDER = re.compile(rb'"\\u0000(body|id|tag)"')


@functools.lru_cache(maxsize=16)
def _envelope_parts(task: str, queue: str, origin: str) -> tuple[bytes, ...]:
    """The serialised envelope split around its variable values: literal, name, literal..."""
    template = codec.compact(_envelope(task, queue, "\0id", "\0body", "\0tag", origin))
    return tuple(_PLACEHOLDER.split(template))
