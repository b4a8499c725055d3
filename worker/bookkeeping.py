"""What the workers keep in Redis about work under way.

Per case (keys from :func:`casefetch.constants.case_key`):

- ``gen``: the deliveryId whose files are being fetched; results of any other are stale;
- ``pending``: set of manifest indices still to fetch;
- ``results``: hash index → finished manifest entry (JSON);
- ``intents``: hash index → a verified file about to be renamed into place (JSON), so a
  worker that dies between the rename and ``record`` costs no second download.

The inbox (``casefetch:inbox``) keeps every accepted delivery until it is archived or
quarantined, its index (``casefetch:inbox:index``) the time it was queued.

``casefetch:active`` scores every case with work outstanding by the time of its last
progress, so the sweep finds stuck ones without scanning the archive. Locks keep two workers
from planning one case, or writing one file, at once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

import redis

from casefetch.codec import compact as compact_json
from casefetch.constants import (
    ACTIVE_CASES_KEY,
    FENCE_KEY,
    INBOX_INDEX_KEY,
    INBOX_KEY,
    INGEST_QUEUE,
    case_key,
    lock_key,
)
from casefetch.protocol import (
    Delivery,
    delivery_from_inbox,
    enqueue_commands,
    inbox_entry,
    ingest_message,
)
from worker.errors import Busy, NotReplicated
from worker.locks import HeldLock, Locks, new_token
from worker.manifest import Entry, parse_json


class ClaimStatus(str, Enum):
    STALE = "stale"
    DONE = "done"
    BUSY = "busy"
    CLAIMED = "claimed"


@dataclass
class Claim:
    """What :meth:`Bookkeeping.claim_many` found for one file: ``stale`` (another generation
    is current), ``done`` (the file has its result), ``busy`` (another worker holds it) or
    ``claimed`` (``lock`` is ours, and ``intent`` is what a dead worker noted before renaming
    the file into place, if it did)."""

    status: ClaimStatus
    lock: HeldLock | None = None
    intent: Entry | None = None


class Recorded(NamedTuple):
    """What :meth:`Bookkeeping.record_many` did: how many files remain (None: the generation
    is stale), and the indices it refused because their lock was no longer the recorder's."""

    remaining: int | None
    refused: list[int]


#: How long a write that must reach the replicas waits for them (Redis WAIT).
REPLICA_WAIT_MS = 1000
#: How long the intents of verified files wait for a replica (a failover leaves the new
#: primary none until the old one is back as its replica): a file already downloaded is
#: worth the wait, where giving up would throw it away and fetch it again later.
INTENT_PATIENCE_SECONDS = 30.0


class Bookkeeping:
    def __init__(self, client: redis.Redis, lock_seconds: float = 60.0, replicas: int = 0) -> None:
        self.redis = client
        self.lock_seconds = lock_seconds
        #: Replicas that must have a claim or an intent before the file is fetched or put in
        #: place (REDIS_MIN_REPLICAS_ACK; 0: no WAIT). See docs/reliability.md, "Failover".
        self.replicas = replicas
        self.locks = Locks(client, lock_seconds)
        self._start = client.register_script(self._START)
        self._record = client.register_script(self._RECORD)
        self._claim = client.register_script(self._CLAIM)
        self._requeue = client.register_script(self._REQUEUE)

    def generation(self, case: str) -> str | None:
        value = self.redis.get(case_key(case, "gen"))
        return value.decode() if isinstance(value, bytes) else None

    def start(self, case: str, gen: str, indices: list[int]) -> None:
        """Make ``gen`` the case's current work, with ``indices`` still to fetch.

        With replicas asked for, it returns only once they hold it (else NotReplicated): the
        delivery leaves the inbox after this, and a failover that lost the case's work while
        the inbox entry's removal reached the new primary would leave the case pending with
        nothing to resume it (no generation, so its downloads are stale, and no entry in
        ``casefetch:active`` for the sweep)."""
        keys = [
            case_key(case, "pending"),
            case_key(case, "results"),
            case_key(case, "intents"),
            case_key(case, "gen"),
            ACTIVE_CASES_KEY,
        ]
        args: list[Any] = [gen, case, time.time(), *indices]
        self._replicated(lambda client: self._start(keys=keys, args=args, client=client))

    def remaining(self, case: str) -> list[int]:
        return sorted(int(i) for i in self.redis.smembers(case_key(case, "pending")))

    def intend_many(self, case: str, entries: dict[int, Entry]) -> None:
        """Note verified files about to be renamed into place, in one round trip."""
        mapping = {str(i): compact_json(entry) for i, entry in entries.items()}
        self._replicated(
            lambda client: client.hset(case_key(case, "intents"), mapping=mapping),
            patience_seconds=INTENT_PATIENCE_SECONDS,
        )

    def _give_back(self, lock_keys: list[str], found: list[Any]) -> None:
        """Release the locks a claim took (``found``: its script's reply)."""
        for i, key in enumerate(lock_keys):
            if ClaimStatus(_text(found[3 * i])) is ClaimStatus.CLAIMED:
                self.locks.release(key, _text(found[3 * i + 2]))

    def _replicated(self, write: Callable[[Any], Any], patience_seconds: float = 0.0) -> Any:
        """``write``'s reply, the write made on ``self.replicas`` replicas too when some are
        asked for: WAIT goes in the same pipeline, on the same connection, so a retry after
        a failover runs both again on the new primary. Tried again (``write`` must be
        idempotent) for ``patience_seconds``; then NotReplicated."""
        if not self.replicas:
            return write(self.redis)
        deadline = time.monotonic() + patience_seconds
        while True:
            pipe: Any = self.redis.pipeline(transaction=False)  # execute_command: untyped
            write(pipe)
            pipe.execute_command("WAIT", self.replicas, REPLICA_WAIT_MS)
            reply, acknowledged = pipe.execute()
            if int(acknowledged) >= self.replicas:
                return reply
            if time.monotonic() >= deadline:
                raise NotReplicated(int(acknowledged), self.replicas, reply)

    def results(self, case: str) -> dict[int, Entry]:
        raw = self.redis.hgetall(case_key(case, "results"))
        return {int(k): parse_json(v) for k, v in raw.items()}

    def claim_many(self, case: str, gen: str, files: list[tuple[int, str]]) -> list[Claim]:
        """Claim several files of one case, ``(index, path)`` each, in one round trip.

        Each claim is ``stale``, ``done``, ``busy`` (another worker holds the file) or
        ``claimed`` (see :class:`Claim`); one script checks the generation, the results and
        the locks of them all, so nothing can start or record in between. Each lock taken
        gets its fence number (see :mod:`worker.locks`) in the same step.
        """
        if not files:
            return []
        keys = [
            case_key(case, "gen"),
            case_key(case, "results"),
            case_key(case, "intents"),
            FENCE_KEY,
            *(lock_key("file", case, path) for _, path in files),
        ]
        args: list[Any] = [gen, self.locks.ttl_ms]
        for index, _ in files:
            args += [index, new_token()]
        try:
            found = self._replicated(
                lambda client: self._claim(keys=keys, args=args, client=client)
            )
        except NotReplicated as exc:
            self._give_back(keys[4:], exc.reply)  # a claim a failover could lose is none
            raise
        claims = []
        for i in range(len(files)):
            status = ClaimStatus(_text(found[3 * i]))
            if status is not ClaimStatus.CLAIMED:
                claims.append(Claim(status))
                continue
            intent = found[3 * i + 1]
            claims.append(
                Claim(
                    status,
                    HeldLock(self.locks, keys[4 + i], _text(found[3 * i + 2])),
                    parse_json(intent) if intent else None,
                )
            )
        return claims

    # Checked and taken atomically: no generation can start, and no other worker record a
    # file, between the checks and the locks. Three values per file: status, intent, token.
    _CLAIM = """
    local stale = redis.call('GET', KEYS[1]) ~= ARGV[1]
    local out = {}
    for i = 5, #KEYS do
      local index, random = ARGV[2 * i - 7], ARGV[2 * i - 6]
      local status, intent, token = 'claimed', '', ''
      if stale then
        status = 'stale'
      elseif redis.call('HEXISTS', KEYS[2], index) == 1 then
        status = 'done'
      elseif redis.call('EXISTS', KEYS[i]) == 1 then
        status = 'busy'
      else
        token = redis.call('INCR', KEYS[4]) .. ':' .. random
        redis.call('SET', KEYS[i], token, 'PX', ARGV[2])
        intent = redis.call('HGET', KEYS[3], index) or ''
      end
      out[#out + 1] = status; out[#out + 1] = intent; out[#out + 1] = token
    end
    return out
    """

    # One step, so no claim or record sees half a generation. KEYS: pending, results, intents,
    # gen, active; ARGV: gen, case, now, then the indices to fetch (added a thousand at a
    # time: Lua's unpack has a limit).
    _START = """
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
    redis.call('SET', KEYS[4], ARGV[1])
    for i = 4, #ARGV, 1000 do
      redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
    end
    redis.call('ZADD', KEYS[5], ARGV[3], ARGV[2])
    """

    def record_many(
        self, case: str, gen: str, done: list[tuple[int, Entry, HeldLock | None]]
    ) -> Recorded:
        """Store several finished entries of one case in one round trip, releasing their
        locks. An entry whose lock is no longer the recorder's is refused: its file is the
        lock's current holder's to record (a stale holder never overwrites its result)."""
        keys = [
            case_key(case, "gen"),
            case_key(case, "results"),
            case_key(case, "pending"),
            ACTIVE_CASES_KEY,
        ]
        args: list[Any] = [gen, case, time.time()]
        for index, entry, lock in done:
            keys.append(lock.key if lock else lock_key("none"))
            args += [index, compact_json(entry), lock.token if lock else ""]
        remaining, *refused = self._record(keys=keys, args=args)
        for _, _, lock in done:
            if lock is not None:
                lock.released = True
        return Recorded(
            None if int(remaining) < 0 else int(remaining), [int(index) for index in refused]
        )

    # Atomic, so a stale result can never land after a newer generation started, nor a stale
    # holder's over the result of the worker its lock passed on to.
    # ARGV: gen, case, now, then index, entry, lock token for each file (KEYS[5...]: locks).
    # Returns the files remaining (-1: stale generation), then the indices refused.
    _RECORD = """
    local out = {-1}
    local current = redis.call('GET', KEYS[1]) == ARGV[1]
    for i = 5, #KEYS do
      local index, entry, token = ARGV[3 * i - 11], ARGV[3 * i - 10], ARGV[3 * i - 9]
      local ours = token == '' or redis.call('GET', KEYS[i]) == token
      if not ours then
        out[#out + 1] = index
      elseif current then
        redis.call('HSET', KEYS[2], index, entry)
        redis.call('SREM', KEYS[3], index)
      end
      if token ~= '' and ours then
        redis.call('DEL', KEYS[i])
      end
    end
    if current then
      redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
      out[1] = redis.call('SCARD', KEYS[3])
    end
    return out
    """

    def finish(self, case: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(
            case_key(case, "pending"),
            case_key(case, "results"),
            case_key(case, "gen"),
            case_key(case, "intents"),
        )
        pipe.zrem(ACTIVE_CASES_KEY, case)
        pipe.execute()

    def stuck(self, older_than_seconds: float) -> list[str]:
        ceiling = time.time() - older_than_seconds
        found = self.redis.zrangebyscore(ACTIVE_CASES_KEY, 0, ceiling)
        return [c.decode() for c in found if isinstance(c, bytes)]

    def delivered(self, delivery_id: str) -> None:
        """The delivery is archived or quarantined: it leaves the inbox."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(INBOX_KEY, delivery_id)
        pipe.zrem(INBOX_INDEX_KEY, delivery_id)
        pipe.execute()

    def undelivered(self, older_than_seconds: float, limit: int = 1000) -> list[tuple[str, bytes]]:
        """Accepted deliveries not finished for a while, with their inbox entry."""
        ceiling = time.time() - older_than_seconds
        ids = [
            i.decode()
            for i in self.redis.zrangebyscore(INBOX_INDEX_KEY, 0, ceiling, 0, limit)
            if isinstance(i, bytes)
        ]
        found = []
        for delivery_id in ids:
            entry = self.redis.hget(INBOX_KEY, delivery_id)
            if isinstance(entry, bytes):
                found.append((delivery_id, entry))
            else:
                self.redis.zrem(INBOX_INDEX_KEY, delivery_id)
        return found

    def enqueue(self, delivery: Delivery, origin: str | None = None) -> None:
        """Queue a delivery (its message, and the delivery in the inbox), as the receiver
        does."""
        transaction: Any = self.redis.pipeline(transaction=True)  # execute_command: untyped
        for command in enqueue_commands(
            ingest_message(delivery, origin),
            inbox_entry(delivery),
            delivery["deliveryId"],
            time.time(),
        ):
            transaction.execute_command(*command)
        transaction.execute()

    def requeue(self, delivery: Delivery, origin: str | None = None) -> bool:
        """Queue a delivery still in the inbox again, at the head of the ingest queue (it is
        taken next), and restart its inbox clock; False if it left the inbox meanwhile."""
        return bool(
            self._requeue(
                keys=[INGEST_QUEUE, INBOX_KEY, INBOX_INDEX_KEY],
                args=[ingest_message(delivery, origin), delivery["deliveryId"], time.time()],
            )
        )

    # KEYS: the ingest queue, the inbox, its index. kombu pops from the right: RPUSH puts the
    # message first in line.
    _REQUEUE = """
    if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then return 0 end
    redis.call('RPUSH', KEYS[1], ARGV[1])
    redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
    return 1
    """

    def received(self, delivery: Delivery) -> Delivery | None:
        """The whole delivery an ingest task's argument (its reference) stands for, as the
        inbox keeps it (None: no longer there, already archived)."""
        delivery_id = delivery["deliveryId"]
        entry = self.redis.hget(INBOX_KEY, delivery_id)
        if not isinstance(entry, bytes):
            return None
        return delivery_from_inbox(delivery_id, entry)

    def held(self, case: str, paths: list[str]) -> list[bool]:
        """Whether a worker holds the lock of each file (``path`` as in the manifest, without
        the extension its content gives it), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for path in paths:
            pipe.exists(lock_key("file", case, path))
        return [bool(found) for found in pipe.execute()]

    def live_writers(self) -> set[str]:
        """The files being fetched now, as storage keys without the extension their content
        gives them (``cases/CF-1/items/001-A``): those whose lock a live worker keeps renewing.
        A lock is the download's heartbeat: it outlives a dead worker by its TTL at most."""
        prefix = lock_key("file", "")
        found = set()
        for raw in self.redis.scan_iter(match=f"{prefix}*", count=1000):
            case, _, path = _text(raw)[len(prefix) :].partition(":")
            if path:
                found.add(f"{case}/{path}")
        return found

    def touch(self, case: str) -> None:
        self.redis.zadd(ACTIVE_CASES_KEY, {case: time.time()}, xx=True)

    @contextlib.contextmanager
    def lock(self, *name: str, wait_seconds: float | None = None) -> Iterator[HeldLock]:
        """Hold a lock while the block runs, extended in the background for long work; a
        write it guards checks it first (:meth:`HeldLock.check`).

        Raises Busy when it cannot be had (at once, or within ``wait_seconds``).
        """
        try:
            held = self.locks.acquire(lock_key(*name), wait_seconds)
        except Busy as exc:
            raise Busy(":".join(name)) from exc
        with held:
            yield held


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


__all__ = ["Bookkeeping", "Busy", "Claim", "ClaimStatus", "Recorded"]
