"""Locks and file claims on a real Redis: one renewal thread keeps every held lock alive, a
release never touches another holder's lock, a claim checks and locks in one step."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from casefetch.constants import case_key, lock_key
from casefetch_tools.redis_server import RedisServer
from tests.waiting import wait_for
from worker.bookkeeping import Bookkeeping, Busy
from worker.locks import Locks


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_server.db_url(8))
    connection.flushdb()
    yield connection
    connection.close()


def test_one_thread_keeps_every_held_lock(client: redis.Redis) -> None:
    locks = Locks(client, ttl_seconds=0.3)
    with locks.acquire("t:a"), locks.acquire("t:b"):
        started = time.monotonic()
        wait_for(
            lambda: (
                time.monotonic() - started > 0.9
                or not (client.exists("t:a") and client.exists("t:b"))
            ),
            timeout=5,
            message="the work to end or a lock to expire",
        )
        assert client.exists("t:a") and client.exists("t:b"), "a held lock expired"
    assert not client.exists("t:a") and not client.exists("t:b")


def test_a_lock_not_entered_is_not_renewed(client: redis.Redis) -> None:
    held = Locks(client, ttl_seconds=0.2).acquire("t:left")
    assert held.key == "t:left"
    wait_for(lambda: not client.exists("t:left"), timeout=5, message="the lock to expire")


def test_a_release_leaves_a_later_holders_lock_alone(client: redis.Redis) -> None:
    locks = Locks(client, ttl_seconds=0.2)
    first = locks.acquire("t:x")
    wait_for(lambda: not client.exists("t:x"), timeout=5, message="the lock to expire")
    with locks.acquire("t:x") as second:
        with first:
            pass  # the first holder finishes late: its release must not free the second's
        assert client.get("t:x") == second.token.encode()
    assert not client.exists("t:x")


def test_acquire_waits_then_gives_up(client: redis.Redis) -> None:
    locks = Locks(client, ttl_seconds=5)
    with locks.acquire("t:w"):
        with pytest.raises(Busy):
            locks.acquire("t:w")
        started = time.monotonic()
        with pytest.raises(Busy):
            locks.acquire("t:w", wait_seconds=0.3)
        assert time.monotonic() - started >= 0.3


def test_claim_checks_generation_result_and_lock_at_once(client: redis.Redis) -> None:
    books = Bookkeeping(client, lock_seconds=5)
    case = "cases/CL-1"
    books.start(case, "gen-1", [0, 1])
    assert books.claim_many(case, "gen-0", [(0, "case.pdf")])[0].status == "stale"

    [claim] = books.claim_many(case, "gen-1", [(0, "case.pdf")])
    assert claim.status == "claimed" and claim.lock is not None and claim.intent is None
    assert books.claim_many(case, "gen-1", [(0, "case.pdf")])[0].status == "busy"
    assert books.held(case, ["case.pdf", "items/001-A"]) == [True, False]
    assert books.live_writers() == {f"{case}/case.pdf"}
    with claim.lock:
        books.intend_many(case, {0: {"path": "case.pdf", "sha256": "ab"}})
        assert books.record_many(case, "gen-1", [(0, {"status": "stored"}, claim.lock)]) == (1, [])
        # Recorded and released in one step.
        assert not client.exists(lock_key("file", case, "case.pdf"))
    assert books.claim_many(case, "gen-1", [(0, "case.pdf")])[0].status == "done"
    assert books.live_writers() == set()

    # A worker that died after noting its intent: the next claim hands the intent over.
    books.intend_many(case, {1: {"path": "items/001-A.png", "sha256": "cd"}})
    [second] = books.claim_many(case, "gen-1", [(1, "items/001-A")])
    assert second.intent == {"path": "items/001-A.png", "sha256": "cd"}
    assert second.lock is not None
    with second.lock:
        pass
    assert not client.exists(lock_key("file", case, "items/001-A"))
    assert client.hlen(case_key(case, "results")) == 1


def test_a_stale_record_still_releases_the_lock(client: redis.Redis) -> None:
    books = Bookkeeping(client, lock_seconds=5)
    case = "cases/CL-2"
    books.start(case, "gen-1", [0])
    [claim] = books.claim_many(case, "gen-1", [(0, "case.pdf")])
    assert claim.lock is not None
    books.start(case, "gen-2", [0])  # a newer delivery took over meanwhile
    with claim.lock:
        recorded = books.record_many(case, "gen-1", [(0, {"status": "stored"}, claim.lock)])
        assert recorded.remaining is None
    assert not client.exists(lock_key("file", case, "case.pdf"))
    assert client.hlen(case_key(case, "results")) == 0


def test_a_batch_is_claimed_and_recorded_in_one_step_each(client: redis.Redis) -> None:
    books = Bookkeeping(client, lock_seconds=5)
    case = "cases/CL-3"
    books.start(case, "gen-1", [0, 1, 2, 3])
    books.record_many(case, "gen-1", [(0, {"status": "stored"}, None)])  # done earlier
    [other] = books.claim_many(case, "gen-1", [(1, "items/001-B")])  # another worker's
    books.intend_many(case, {2: {"path": "items/002-C.png", "sha256": "ef"}})  # a dead one's
    files = [(0, "case.pdf"), (1, "items/001-B"), (2, "items/002-C"), (3, "items/003-D")]

    assert [c.status for c in books.claim_many(case, "gen-0", files)] == ["stale"] * 4
    claims = books.claim_many(case, "gen-1", files)
    assert [c.status for c in claims] == ["done", "busy", "claimed", "claimed"]
    assert claims[0].lock is None and claims[1].lock is None
    assert claims[2].intent == {"path": "items/002-C.png", "sha256": "ef"}
    assert claims[3].intent is None
    fourth = claims[3].lock
    assert fourth is not None
    assert client.get(lock_key("file", case, "items/003-D")) == fourth.token.encode()

    held = [c.lock for c in claims[2:] if c.lock is not None]
    remaining = books.record_many(
        case, "gen-1", [(2, {"status": "stored"}, held[0]), (3, {"status": "failed"}, held[1])]
    )
    assert remaining == (1, [])  # file 1, still with the other worker
    assert all(lock.released for lock in held)
    assert not client.exists(lock_key("file", case, "items/002-C"))
    assert not client.exists(lock_key("file", case, "items/003-D"))
    assert client.exists(lock_key("file", case, "items/001-B"))
    assert set(books.results(case)) == {0, 2, 3}
    assert other.lock is not None
    with other.lock:
        recorded = books.record_many(case, "gen-2", [(1, {"status": "stored"}, other.lock)])
        assert recorded.remaining is None
    assert not client.exists(lock_key("file", case, "items/001-B"))  # stale, yet released
