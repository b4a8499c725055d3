"""The quarantine: deliveries that cannot be archived, kept as records operators list, read
and replay.

Replay semantics: the stored raw body is enqueued as a *new* delivery (a new deliveryId),
exactly as the receiver enqueues a webhook, with the header ``X-Casefetch-Replay-Of`` naming
the record it came from. Once Redis has taken it, the old record is removed: the body now
lives in the queue, and from there in the archive or, if it still cannot be archived, in a
new quarantine record (under the new deliveryId, with the new errors, the header telling
which record it replays). A body is so never in the quarantine twice.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from casefetch import codec
from casefetch.protocol import (
    Delivery,
    delivery_body,
    make_delivery,
    safe_headers,
)
from worker import archive
from worker.bookkeeping import Bookkeeping
from worker.errors import NotFound
from worker.inspection import RecordNotFound
from worker.storage import Storage

log = logging.getLogger("casefetch.worker")

REPLAY_HEADER = "X-Casefetch-Replay-Of"

Record = dict[str, Any]


def quarantine(storage: Storage, delivery: Delivery, reason: str, errors: Any) -> None:
    """Keep a delivery that cannot be archived, with why, as ``quarantine/<deliveryId>.json``."""
    record: Record = {
        "deliveryId": delivery["deliveryId"],
        "receivedAt": delivery.get("receivedAt"),
        "reason": reason,
        "errors": errors,
    }
    if delivery.get("body") is not None:
        record["body"] = delivery["body"]
    else:
        record["bodyBase64"] = delivery.get("bodyBase64")
    record["headers"] = delivery.get("headers", {})
    storage.write_bytes(archive.quarantine_key(delivery["deliveryId"]), codec.pretty(record))
    log.warning("delivery %s quarantined: %s", delivery["deliveryId"], reason)


def record_ids(storage: Storage) -> list[str]:
    """Every quarantined deliveryId, oldest first (ids sort by arrival)."""
    ids = [
        key.rsplit("/", 1)[-1].removesuffix(".json")
        for key in storage.list(f"{archive.QUARANTINE}/")
        if key.endswith(".json")
    ]
    return sorted(ids)


def read_record(storage: Storage, delivery_id: str) -> Record:
    try:
        data = storage.read_bytes(archive.quarantine_key(delivery_id))
    except NotFound as exc:
        raise RecordNotFound(delivery_id) from exc
    record = json.loads(data)
    if not isinstance(record, dict):
        raise RecordNotFound(delivery_id)
    return record


def summarise(record: Record) -> dict[str, Any]:
    body = delivery_body(record)
    errors = record.get("errors")
    return {
        "deliveryId": record.get("deliveryId"),
        "receivedAt": record.get("receivedAt"),
        "reason": record.get("reason"),
        "errors": _flatten(errors),
        "bytes": len(body),
        "replayOf": (record.get("headers") or {}).get(REPLAY_HEADER),
    }


def list_records(storage: Storage) -> list[dict[str, Any]]:
    """One summary per record, newest first."""
    found = []
    for delivery_id in record_ids(storage):
        try:
            found.append(summarise(read_record(storage, delivery_id)))
        except (RecordNotFound, ValueError):
            continue
    found.sort(key=lambda r: (r["receivedAt"] or "", r["deliveryId"] or ""), reverse=True)
    return found


def replay(storage: Storage, redis_client: Any, delivery_id: str) -> str:
    """Enqueue a quarantined body as a new delivery, then drop the record; the new id."""
    record = read_record(storage, delivery_id)
    headers = safe_headers((str(k), str(v)) for k, v in (record.get("headers") or {}).items())
    headers[REPLAY_HEADER] = str(record.get("deliveryId") or delivery_id)
    delivery = make_delivery(delivery_body(record), headers)
    Bookkeeping(redis_client).enqueue(delivery)
    storage.delete(archive.quarantine_key(delivery_id))
    return delivery["deliveryId"]


def _flatten(errors: Any, prefix: str = "") -> list[str]:
    """marshmallow's nested error dict as ``field: message`` lines."""
    if isinstance(errors, dict):
        lines = []
        for field, value in errors.items():
            name = field if field != "_schema" else ""
            lines += _flatten(value, f"{prefix}.{name}" if prefix and name else prefix or name)
        return lines
    if isinstance(errors, list):
        return [line for value in errors for line in _flatten(value, prefix)]
    return [f"{prefix}: {errors}" if prefix else str(errors)]
