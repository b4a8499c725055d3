"""Failover under load: the Redis primary SIGKILLed while signed webhooks arrive and files
are being fetched; the sentinels promote its replica, and nothing accepted is lost.

Real processes: a primary, a replica and three sentinels (tests/sentinels.py), a receiver
and two workers pointed at the sentinels, a file server. The killed primary is restarted
once the replica is promoted, as its service manager would: the sentinels make it the new
primary's replica, so the receiver can again have each delivery acknowledged by a replica
(REDIS_MIN_REPLICAS_ACK=1) before it answers 202.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from casefetch.constants import ACTIVE_CASES_KEY, INBOX_KEY, INGEST_QUEUE, case_key, lock_key
from casefetch_tools.redis_server import RedisServer
from tests import samples
from tests.archive_view import Archive
from tests.faults import (
    FAST_RECOVERY,
    Tally,
    check_archive,
    duplicate_writes,
    settle_or_explain,
    tracebacks,
)
from tests.fileserver import FileServer
from tests.pipeline_harness import harness
from tests.processes import ReceiverProcess, WorkerProcess, receiver_env, worker_env
from tests.receiver_helpers import hmac_headers
from tests.sentinels import MASTER, SentinelGroup
from tests.waiting import wait_for
from worker.bookkeeping import Bookkeeping
from worker.errors import NotReplicated

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(240)]

#: Webhooks sent at least, the primary killed after about a third of them.
MIN_SENT = 210
KILL_AFTER = 70
#: The sender goes on until this many were accepted after the kill (and MIN_SENT were sent).
ACCEPTED_AFTER_KILL = 40
#: Pause between two webhooks: the platform's pace, so that the failover falls mid-stream.
PACE_SECONDS = 0.02
#: Every accepted case archived within the contract's two minutes of the kill, and a margin.
SETTLE_SECONDS = 150


@dataclass
class Timeline:
    """When each answer came, relative to the kill (monotonic clock)."""

    killed_at: float | None = None
    answers: list[tuple[float, float, int]] = field(
        default_factory=list
    )  # (sent, answered, status)

    def first_accepted_after_kill(self) -> float:
        assert self.killed_at is not None
        return (
            min(
                answered
                for sent, answered, status in self.answers
                if status == 202 and sent >= self.killed_at
            )
            - self.killed_at
        )

    def accepted_after_kill(self) -> int:
        killed = self.killed_at
        return sum(
            1 for sent, _, status in self.answers if status == 202 and killed and sent >= killed
        )


@pytest.fixture
def ha_stack(sentinels: SentinelGroup, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A receiver, two workers and a file server, pointed at the sentinels."""
    files = FileServer().start()
    receiver = ReceiverProcess(
        {**receiver_env(sentinels.url), **sentinels.env(), "REDIS_MIN_REPLICAS_ACK": "1"},
        tmp_path / "receiver.log",
    )
    workers = [
        WorkerProcess(
            worker_env(
                sentinels.url,
                tmp_path / "archive",
                REDIS_SENTINEL_MASTER=MASTER,
                REDIS_MIN_REPLICAS_ACK="1",
                **FAST_RECOVERY,
            ),
            tmp_path / f"worker{n}.log",
            concurrency=4,
        )
        for n in range(2)
    ]
    try:
        receiver.start()
        for worker in workers:
            worker.start()
        yield {
            "files": files,
            "receiver": receiver,
            "workers": workers,
            "archive": Archive(tmp_path / "archive"),
        }
    finally:
        for worker in workers:
            worker.stop(signal.SIGKILL)
        receiver.stop()
        files.stop()


def test_primary_sigkilled_under_load_loses_nothing(
    sentinels: SentinelGroup, ha_stack: dict[str, Any], report_line: Callable[[str], None]
) -> None:
    files: FileServer = ha_stack["files"]
    receiver: ReceiverProcess = ha_stack["receiver"]
    workers: list[WorkerProcess] = ha_stack["workers"]
    archive: Archive = ha_stack["archive"]
    tally, timeline = Tally(), Timeline()
    expected: dict[str, dict[str, bytes]] = {}
    others: list[int] = []
    stop = threading.Event()

    def make_case(i: int) -> tuple[str, bytes]:
        cf = f"FAILOVER-{i:04d}"
        slow = i % 10 == 0  # 2 s downloads: some are in flight at the kill
        pdf = samples.pdf(300_000 if slow else 3_000 + i)
        image = samples.png(seed=i)
        pdf_url = files.add(f"{cf}/pdf", pdf, chunk_delay=0.4 if slow else 0.0)
        image_url = files.add(f"{cf}/img", image)
        expected[cf] = {pdf_url: pdf, image_url: image}
        return cf, samples.body(samples.case(cf, pdf_url, [samples.item("IT-1", image_url)]))

    def send() -> None:
        i = 0
        while not stop.is_set() and (
            i < MIN_SENT or timeline.accepted_after_kill() < ACCEPTED_AFTER_KILL
        ):
            cf, body = make_case(i)
            # HMAC-signed and bearer webhooks alternate, each sent once: its answer is counted.
            headers = hmac_headers(body) if i % 2 else None
            started = time.monotonic()
            status = tally.post(receiver, cf, body, headers)
            timeline.answers.append((started, time.monotonic(), status))
            if status not in (202, 503):
                others.append(status)
            i += 1
            stop.wait(PACE_SECONDS)

    sender = threading.Thread(target=send, name="sender")
    sender.start()
    try:
        wait_for(
            lambda: tally.sent >= KILL_AFTER and files.in_flight > 0,
            timeout=60,
            message="a third of the webhooks sent and downloads in flight",
        )
        old = sentinels.kill_primary()
        timeline.killed_at = time.monotonic()
        sentinels.wait_for_promotion(old)
        promoted = time.monotonic() - timeline.killed_at
        old.start()  # as its service manager would; the sentinels make it a replica
        sender.join(timeout=120)
        assert not sender.is_alive(), "the sender never had its webhooks accepted again"
    finally:
        stop.set()
        sender.join()

    def all_archived() -> bool:
        return all(
            (archive.manifest(cf) or {}).get("status") == "complete" for cf in tally.accepted
        )

    settle_or_explain(
        all_archived,
        tally,
        archive,
        workers,
        lambda: sentinels.target().client(socket_timeout=5),
        timeout=SETTLE_SECONDS,
    )
    assert timeline.killed_at is not None
    archived_after = time.monotonic() - timeline.killed_at
    accepted = {cf: expected[cf] for cf in tally.accepted}
    refetches = check_archive(archive, files, accepted)
    duplicates = duplicate_writes(workers)
    statuses = [status for _, _, status in timeline.answers]
    unexpected, expected_tracebacks = tracebacks(
        {
            log.name: log.read_text(errors="replace")
            for log in [*(worker.log_path for worker in workers), receiver.log_path]
        }
    )
    report_line(
        tally.line(
            "redis primary SIGKILL, sentinel failover under load", archive, duplicates, refetches
        )
        + f" answered_202={statuses.count(202)} answered_503={statuses.count(503)}"
        + f" other={len(others)} promoted_s={promoted:.1f}"
        + f" kill_to_first_202_s={timeline.first_accepted_after_kill():.1f}"
        + f" kill_to_all_archived_s={archived_after:.1f}"
        + f" expected_tracebacks={expected_tracebacks}"
    )
    assert tally.sent >= MIN_SENT and others == []
    assert duplicates == 0
    # Re-fetches are reported, not asserted: a verified download whose intent no replica
    # acknowledges within INTENT_PATIENCE_SECONDS (the restarted primary resyncing slowly on
    # a loaded machine: 12 re-fetches once, all archived 56 s after the kill) is fetched
    # again by design. It costs bandwidth; the archive is the same (duplicate writes 0).
    assert not (archive.root / "quarantine").exists(), "a failover is not the payload's fault"
    assert unexpected == []


def test_with_a_replica_a_start_a_claim_and_an_intent_are_on_it_when_they_return(
    sentinels: SentinelGroup,
) -> None:
    client = sentinels.target().client(socket_timeout=5)
    books = Bookkeeping(client, lock_seconds=30, replicas=1)
    case = "cases/WAIT-1"
    books.start(case, "gen-1", [0])
    [claim] = books.claim_many(case, "gen-1", [(0, "case.pdf")])
    assert claim.lock is not None
    books.intend_many(case, {0: {"path": "case.pdf", "sha256": "ab"}})
    replica = next(server for server in sentinels.servers if server is not sentinels.primary())
    # What the primary acknowledged, its replica has: a failover now loses none of it.
    with redis.Redis(port=replica.port) as direct:
        assert direct.get(case_key(case, "gen")) == b"gen-1"
        assert direct.zscore(ACTIVE_CASES_KEY, case) is not None
        assert direct.get(lock_key("file", case, "case.pdf")) == claim.lock.token.encode()
        assert direct.hexists(case_key(case, "intents"), "0")
    client.close()


def test_a_claim_no_replica_acknowledged_is_given_back(redis_client: redis.Redis) -> None:
    books = Bookkeeping(redis_client, lock_seconds=30, replicas=1)  # a Redis with no replica
    unreplicated = Bookkeeping(redis_client)  # no replicas asked for
    case = "cases/WAIT-2"
    unreplicated.start(case, "gen-1", [0])
    with pytest.raises(NotReplicated):
        books.claim_many(case, "gen-1", [(0, "case.pdf")])
    assert not redis_client.exists(lock_key("file", case, "case.pdf"))
    # Without replicas asked for, the same claim is taken at once.
    assert unreplicated.claim_many(case, "gen-1", [(0, "case.pdf")])[0].lock


def test_a_delivery_leaves_the_inbox_only_once_a_replica_holds_its_case(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The case's work (its generation, the files to fetch, its place in the sweep's list)
    must be on a replica before the delivery leaves the inbox: else a failover can lose the
    first while the second reaches the new primary, and the case stays pending with nothing
    to resume it (seen once in this file's failover test: one accepted case never settled)."""
    pipe = harness(tmp_path / "archive", redis_server.url, db=13, replicas=1)  # no replica
    try:
        delivery = pipe.accept(samples.body(samples.case("WAIT-3", "http://127.0.0.1:9/x.pdf")))
        assert pipe.step()
        # Postponed, not finished: the message is handed back, the delivery still in the inbox.
        assert pipe.outcomes == {}
        assert pipe.broker.hexists(INBOX_KEY, delivery["deliveryId"])
        assert pipe.broker.llen(INGEST_QUEUE) == 1
        assert (pipe.manifest("cases/WAIT-3") or {}).get("status") == "pending"
    finally:
        pipe.close()
