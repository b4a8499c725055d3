"""Fencing on a real Redis: a worker whose lock passed on while it was cut off (its TTL ran
out, another worker took the file or the case) puts nothing in place, records nothing and
writes no manifest; the new holder's work stands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from casefetch.constants import case_key, lock_key
from casefetch_tools.redis_server import RedisServer
from tests.samples import closed_after_test
from worker import casefiles
from worker.bookkeeping import Bookkeeping, Claim
from worker.download import Fetcher
from worker.errors import LockLost
from worker.files import LOST, Files, Finished
from worker.locks import HeldLock, Locks
from worker.manifest import Entry, Manifest
from worker.messages import FileJob
from worker.settings import DownloadSettings
from worker.settle import Settler
from worker.storage import LocalStorage

CASE = "cases/CF-FENCE"
GEN = "gen-1"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_server.db_url(9))
    yield connection
    connection.close()


@pytest.fixture
def books(client: redis.Redis) -> Bookkeeping:
    return Bookkeeping(client, lock_seconds=30)


@pytest.fixture
def files(tmp_path: Path, books: Bookkeeping) -> Files:
    storage = LocalStorage(tmp_path)
    fetcher = closed_after_test(Fetcher(DownloadSettings()))
    return Files(storage, books, fetcher, Settler(storage, books))


def expire(client: redis.Redis, held: HeldLock) -> None:
    """The lock's TTL ran out while its holder was cut off (renewals never reached Redis)."""
    client.delete(held.key)


def job() -> FileJob:
    return {
        "case": CASE,
        "gen": GEN,
        "cfRef": "CF-FENCE",
        "index": 0,
        "path": "case.pdf",
        "kind": "case_pdf",
        "sourceUrl": "http://files.invalid/case.pdf",
    }


def claim(books: Bookkeeping) -> Claim:
    [found] = books.claim_many(CASE, GEN, [(0, "case.pdf")])
    assert found.lock is not None, found.status
    return found


def taken_over(client: redis.Redis, books: Bookkeeping) -> tuple[HeldLock, HeldLock]:
    """The file's lock, taken, expired while its holder was cut off, and taken again: the
    stale holder's and the current holder's."""
    books.start(CASE, GEN, [0])
    stale = claim(books).lock
    assert stale is not None
    expire(client, stale)
    current = claim(books).lock
    assert current is not None
    return stale, current


def staged(files: Files, claim: Claim, data: bytes) -> Finished:
    """A file fetched and verified under ``claim``, staged, not yet in place."""
    with files.storage.stage(f"{CASE}/case.pdf") as staging:
        staging.write(data)
    entry: Entry = {"path": "case.pdf", "kind": "case_pdf", "status": "stored", "error": None}
    entry["sha256"], entry["bytes"] = data.hex(), len(data)
    return Finished(job(), claim, entry, staging)


def test_every_acquisition_gets_a_higher_fence(client: redis.Redis, books: Bookkeeping) -> None:
    locks = Locks(client, ttl_seconds=30)
    first = locks.acquire("t:fence")
    expire(client, first)
    second = locks.acquire("t:fence")
    books.start(CASE, GEN, [0])
    third = claim(books).lock
    assert third is not None
    assert first.fence < second.fence < third.fence
    assert client.get("t:fence") == second.token.encode()


def test_a_confirmed_lock_has_its_whole_ttl_for_the_write(client: redis.Redis) -> None:
    locks = Locks(client, ttl_seconds=30)
    held = locks.acquire("t:short")
    client.pexpire("t:short", 500)  # renewals stopped reaching Redis, yet no one took it
    held.check()
    assert client.pttl("t:short") > 29_000  # no one else can take it while the write runs
    expire(client, held)
    assert locks.confirm([held]) == [False]
    with pytest.raises(LockLost):
        held.check()


def test_a_stale_holder_puts_nothing_in_place(
    client: redis.Redis, books: Bookkeeping, files: Files
) -> None:
    books.start(CASE, GEN, [0])
    stale = claim(books)
    late = staged(files, stale, b"A's bytes")
    assert stale.lock is not None
    expire(client, stale.lock)
    current = claim(books)  # the file went to another worker

    assert files.commit(CASE, GEN, [late]) == [LOST]
    storage = files.storage
    assert isinstance(storage, LocalStorage)
    assert not storage.exists(f"{CASE}/case.pdf")
    assert not list(storage.tmp.glob("*.part")), "the stale staged file was not discarded"
    assert books.results(CASE) == {}
    assert current.lock is not None
    assert client.get(current.lock.key) == current.lock.token.encode()  # left to its holder

    assert files.commit(CASE, GEN, [staged(files, current, b"B's bytes")]) == ["stored"]
    assert storage.read_bytes(f"{CASE}/case.pdf") == b"B's bytes"
    assert books.results(CASE)[0]["sha256"] == b"B's bytes".hex()


def test_a_stale_holder_never_overwrites_the_new_holders_result(
    client: redis.Redis, books: Bookkeeping
) -> None:
    stale, current = taken_over(client, books)
    ours: Entry = {"path": "case.pdf", "status": "stored", "sha256": "bb"}
    assert books.record_many(CASE, GEN, [(0, ours, current)]) == (0, [])

    theirs: Entry = {"path": "case.pdf", "status": "failed", "error": "cut off"}
    assert books.record_many(CASE, GEN, [(0, theirs, stale)]).refused == [0]
    assert books.results(CASE) == {0: ours}


def test_a_stale_record_leaves_the_new_holders_lock(
    client: redis.Redis, books: Bookkeeping
) -> None:
    stale, current = taken_over(client, books)
    entry: Entry = {"path": "case.pdf", "status": "stored", "sha256": "aa"}
    assert books.record_many(CASE, GEN, [(0, entry, stale)]) == (1, [0])
    assert client.get(current.key) == current.token.encode()
    assert client.sismember(case_key(CASE, "pending"), "0")


def pending_manifest() -> Manifest:
    return {
        "cfRef": "CF-FENCE",
        "reportId": "R-1",
        "deliveryId": GEN,
        "status": "pending",
        "files": [{"path": "case.pdf", "kind": "case_pdf", "status": "pending", "error": None}],
        "warnings": [],
    }


def test_a_stale_case_lock_writes_no_manifest(
    client: redis.Redis, books: Bookkeeping, files: Files
) -> None:
    storage = files.storage
    with books.lock("case", CASE) as lock:
        casefiles.write_manifest(storage, CASE, pending_manifest(), lock)
    books.start(CASE, GEN, [0])
    [done] = books.claim_many(CASE, GEN, [(0, "case.pdf")])
    stored: Entry = {"path": "case.pdf", "status": "stored", "sha256": "aa", "bytes": 2}
    books.record_many(CASE, GEN, [(0, stored, done.lock)])

    stale = books.locks.acquire(lock_key("case", CASE))
    expire(client, stale)
    with books.lock("case", CASE):  # another worker holds the case now
        with pytest.raises(LockLost):
            files.settler.settle_locked(CASE, GEN, stale)
        assert json.loads(storage.read_bytes(f"{CASE}/manifest.json"))["status"] == "pending"

    files.settler.settle(CASE, GEN)  # under a lock of its own, it is written
    assert json.loads(storage.read_bytes(f"{CASE}/manifest.json"))["status"] == "complete"
