"""The message the receiver writes and the worker consumes.

The receiver does not go through Celery to enqueue: Celery's publisher is synchronous and
costs more than the rest of the request. Instead it writes, with one Redis command, exactly
the message a stock Celery worker reads from kombu's Redis transport (task protocol 2, JSON
serialiser, base64 body). ``tests/test_pipeline.py`` proves a real worker consumes what
the real receiver wrote.

A *delivery* is one accepted webhook request::

    {"deliveryId": str, "receivedAt": ISO 8601, "body": str | None,
     "bodyBase64": str | None, "headers": {name: value}}

``body`` is the raw request body as text; ``bodyBase64`` replaces it when the bytes are not
UTF-8 (quarantine replays may carry such bodies).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypedDict

from casefetch.constants import CREDENTIAL_HEADERS, INBOX_INDEX_KEY, INBOX_KEY, INGEST_QUEUE

_ORIGIN = f"casefetch-receiver@{socket.gethostname()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class Delivery(TypedDict, total=False):
    deliveryId: str
    receivedAt: str
    body: str | None
    bodyBase64: str | None
    headers: dict[str, str]


#: Queue a delivery's message and keep it in the inbox, atomically, in one round trip.
#: ARGV: the message, the deliveryId, the time it was accepted.
ENQUEUE_SCRIPT = """
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
return 1
"""
ENQUEUE_KEYS = [INGEST_QUEUE, INBOX_KEY, INBOX_INDEX_KEY]


def new_delivery_id() -> str:
    """A UUID whose first 48 bits are the time in ms (the UUIDv7 layout): ids sort by arrival."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | (0x7 << 76) | (rand & ((1 << 76) - 1))
    value = (value & ~(0xC << 60)) | (0x8 << 60)  # RFC 4122 variant bits
    return str(uuid.UUID(int=value))


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def safe_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The request headers worth keeping, without any credential."""
    kept: dict[str, str] = {}
    for name, value in headers:
        if name.lower() not in CREDENTIAL_HEADERS:
            kept[name] = value
    return kept


def make_delivery(body: bytes, headers: Mapping[str, str], delivery_id: str | None = None,
                  received_at: str | None = None) -> Delivery:
    delivery: Delivery = {
        "deliveryId": delivery_id or new_delivery_id(),
        "receivedAt": received_at or utc_now_iso(),
        "headers": dict(headers),
    }
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


def delivery_from_message(message: bytes) -> Delivery:
    """The delivery inside a message written by :func:`task_message`."""
    envelope = json.loads(message)
    args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    delivery: Delivery = args[0]
    return delivery


def task_message(task: str, queue: str, args: list[Any], task_id: str | None = None) -> bytes:
    """Serialise a Celery task-protocol-2 message as kombu's Redis transport stores it.

    Push it with ``LPUSH <queue> <message>`` (kombu pops from the right: first in, first out).
    """
    task_id = task_id or str(uuid.uuid4())
    body = json.dumps([args, {}, _EMBED], ensure_ascii=False, separators=(",", ":"))
    envelope = {
        "body": base64.b64encode(body.encode("utf-8")).decode("ascii"),
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
            "origin": _ORIGIN,
            "ignore_result": True,
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope, separators=(",", ":")).encode("ascii")
