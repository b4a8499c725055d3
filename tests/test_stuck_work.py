"""Work that would never end, or never start, with a real worker process: a file host that
trickles bytes, and a delivery lost while the ingest queue is never empty."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from casefetch.constants import DOWNLOAD_QUEUE, INGEST_QUEUE
from casefetch.protocol import make_delivery
from casefetch_tools.redis_server import RedisServer
from tests import samples
from tests.archive_view import Archive
from tests.fileserver import FileServer
from tests.processes import WorkerProcess, worker_env
from tests.queues import take_message
from tests.waiting import wait_for
from worker.bookkeeping import Bookkeeping

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def own_db(redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[str]:
    url = redis_server.db_url(13)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def download_messages(client: redis.Redis, case: str) -> list[str]:
    """The download messages for ``case`` kombu keeps: queued, or held by a worker (a retry
    waiting for its countdown is held too)."""
    found = []
    raws = [
        *client.lrange(DOWNLOAD_QUEUE, 0, -1),
        *(json.loads(v)[0] for v in client.hvals("unacked")),
    ]
    for raw in raws:
        envelope = json.loads(raw) if isinstance(raw, bytes) else raw
        body = base64.b64decode(envelope["body"]).decode()
        if envelope["headers"]["task"] == "casefetch.download" and f'"{case}"' in body:
            found.append(body)
    return found


def sweep_passes(client: redis.Redis, count: int) -> None:
    """Wait for ``count`` passes of the sweeper (each takes the election key anew)."""
    for _ in range(count):
        wait_for(lambda: not client.exists("casefetch:sweep"), timeout=10, message="a sweep")
        wait_for(lambda: client.exists("casefetch:sweep"), timeout=10, message="a sweep")


def test_a_trickling_host_settles_its_case_and_leaves_nothing_queued(
    own_db: str, file_server: FileServer, tmp_path: Path
) -> None:
    attempts, deadline, backoff = 3, 1.5, 0.5
    env = worker_env(
        own_db,
        tmp_path / "archive",
        DOWNLOAD_ATTEMPT_TIMEOUT_SECONDS=str(deadline),
        DOWNLOAD_MAX_ATTEMPTS=str(attempts),
        DOWNLOAD_BACKOFF_MAX_SECONDS=str(backoff),
        # Sweeps as often as they come: each finds the case without progress.
        SWEEP_INTERVAL_SECONDS="0.5",
        SWEEP_STUCK_AFTER_SECONDS="0.5",
        CELERY_VISIBILITY_TIMEOUT="5",
    )
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    client = redis.Redis.from_url(own_db)
    try:
        cf = "TRICKLE-1"
        # 100 bytes every 0.2 s: no gap near DOWNLOAD_TIMEOUT_SECONDS, 80 s for the file.
        pdf = file_server.add("trickle/pdf", samples.pdf(40_000), trickle=(1000, 100, 0.2))
        png = file_server.add("trickle/a", samples.png())
        body = samples.body(samples.case(cf, pdf, [samples.item("A", png)]))
        started = time.monotonic()
        Bookkeeping(client).enqueue(make_delivery(body, {}))
        # Every try cut at its deadline, the backoffs between, and the worker's own time.
        bound = attempts * deadline + attempts * backoff + 5
        manifest = Archive(tmp_path / "archive").settled(cf, timeout=bound)
        took = time.monotonic() - started

        assert manifest["status"] == "incomplete", manifest
        entry, image = manifest["files"]
        assert entry["status"] == "failed" and entry["attempts"] == attempts
        assert "DOWNLOAD_ATTEMPT_TIMEOUT_SECONDS" in entry["error"]
        assert image["status"] == "stored"
        assert took < bound
        sweep_passes(client, 3)
        assert download_messages(client, f"cases/{cf}") == [], "work queued for a settled case"
        assert client.llen(DOWNLOAD_QUEUE) == 0
    finally:
        worker.stop()
        client.close()


def test_a_lost_delivery_is_archived_while_the_ingest_queue_never_drains(
    own_db: str, file_server: FileServer, tmp_path: Path
) -> None:
    visibility = 5
    env = worker_env(
        own_db,
        tmp_path / "archive",
        CELERY_VISIBILITY_TIMEOUT=str(visibility),
        SWEEP_INTERVAL_SECONDS="0.5",
    )
    worker = WorkerProcess(env, tmp_path / "worker.log", "--concurrency", "2").start()
    client = redis.Redis.from_url(own_db)
    books = Bookkeeping(client)
    # Each case of the backlog takes its worker thread about half a second (a slow PDF).
    slow = file_server.add("backlog/pdf", samples.pdf(200_000), chunk_delay=0.15)
    stop = threading.Event()
    sent: list[str] = []

    def feed() -> None:
        while not stop.wait(0.05):
            while client.llen(INGEST_QUEUE) < 10:
                cf = f"BACKLOG-{len(sent)}"
                books.enqueue(make_delivery(samples.body(samples.case(cf, slow)), {}))
                sent.append(cf)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        wait_for(lambda: client.llen(INGEST_QUEUE) >= 10, message="a backlog")
        cf = "LOST-UNDER-BACKLOG"
        lost = make_delivery(
            samples.body(samples.case(cf, file_server.add("backlog/lost", samples.pdf()))), {}
        )
        books.enqueue(lost)
        # As if a worker popped its message and Redis died before kombu noted it.
        take_message(client, INGEST_QUEUE, lost["deliveryId"])
        started = time.monotonic()
        # Production: within two minutes (a 60 s visibility timeout, a sweep every 30 s).
        # Here: the visibility timeout, a few sweeps, the worker's own time.
        manifest = Archive(tmp_path / "archive").settled(cf, timeout=visibility + 10)
        assert manifest["status"] == "complete"
        assert client.llen(INGEST_QUEUE) > 0, "the backlog drained: the test proves nothing"
        assert time.monotonic() - started < visibility + 10
        assert len(sent) > 20
    finally:
        stop.set()
        feeder.join()
        worker.stop()
        client.close()
