"""Redelivery after a crash at each step of a case's life: the pipeline, run directly on a real
Redis and a real local archive, picks up where the dead worker stopped and nothing twice."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from casefetch.constants import INBOX_INDEX_KEY, INBOX_KEY, lock_key
from casefetch.protocol import Delivery, delivery_body, make_delivery
from casefetch.redis_target import RedisTarget
from casefetch_tools.redis_server import RedisServer
from tests import samples
from tests.fileserver import FileServer
from tests.samples import closed_after_test
from worker.batch import fetch_batch
from worker.bookkeeping import Bookkeeping
from worker.casefiles import read_manifest
from worker.download import Fetcher
from worker.messages import DownloadMessage
from worker.pipeline import Pipeline
from worker.settings import DownloadSettings
from worker.storage import LocalStorage

#: A pipeline, and the download messages it sent.
Built = tuple[Pipeline, list[DownloadMessage]]


@pytest.fixture
def own_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.db_url(7))
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def pipeline(own_redis: redis.Redis, tmp_path: Path) -> Built:
    sent: list[DownloadMessage] = []
    return Pipeline(
        storage=LocalStorage(tmp_path / "archive"),
        books=Bookkeeping(own_redis, lock_seconds=5),
        fetcher=closed_after_test(Fetcher(DownloadSettings(allow_private_networks=True))),
        send_download=sent.append,
    ), sent


def delivery_for(file_server: FileServer, cf: str) -> Delivery:
    body = samples.body(
        samples.case(
            cf,
            file_server.add(f"rec/{cf}/pdf", samples.pdf()),
            [samples.item("A", file_server.add(f"rec/{cf}/a", samples.png()))],
        )
    )
    return make_delivery(body, {})


def batch_runtime(pipe: Pipeline, threads: int = 2) -> Any:
    """What fetch_batch needs of a worker's runtime: the pipeline and the file threads."""
    return SimpleNamespace(pipeline=pipe, files=ThreadPoolExecutor(threads))


def run_all(pipe: Pipeline, sent: list[DownloadMessage]) -> list[str]:
    """Fetch every queued download message as the download task does."""
    runtime = batch_runtime(pipe)
    outcomes: list[str] = []
    try:
        while sent:
            done, postponed = fetch_batch(runtime, sent.pop(0))
            assert postponed is None
            outcomes += done
    finally:
        runtime.files.shutdown()
    return outcomes


def test_ingest_redelivered_after_a_crash_before_the_manifest(
    pipeline: Built, file_server: FileServer
) -> None:
    pipe, sent = pipeline
    delivery = delivery_for(file_server, "REC-1")
    # The dead worker got as far as writing case.json.
    pipe.storage.write_bytes("cases/REC-1/case.json", delivery_body(delivery))
    assert pipe.ingest(delivery) == "planned"
    run_all(pipe, sent)
    manifest = read_manifest(pipe.storage, "cases/REC-1")
    assert manifest is not None and manifest["status"] == "complete"
    assert not pipe.storage.exists("cases/REC-1/history")


def test_a_finished_delivery_leaves_the_inbox(
    pipeline: Built, file_server: FileServer, own_redis: redis.Redis
) -> None:
    pipe, _ = pipeline
    delivery = delivery_for(file_server, "REC-0")
    own_redis.hset(INBOX_KEY, delivery["deliveryId"], b"message")
    own_redis.zadd(INBOX_INDEX_KEY, {delivery["deliveryId"]: 1.0})
    assert pipe.books.undelivered(older_than_seconds=0) == [(delivery["deliveryId"], b"message")]
    pipe.ingest(delivery)
    assert pipe.books.undelivered(older_than_seconds=0) == []
    assert own_redis.hlen(INBOX_KEY) == 0


def test_ingest_redelivered_after_a_crash_before_the_downloads_were_sent(
    pipeline: Built, file_server: FileServer
) -> None:
    pipe, sent = pipeline
    delivery = delivery_for(file_server, "REC-2")
    assert pipe.ingest(delivery) == "planned"
    sent.clear()  # the messages never reached Redis
    assert pipe.ingest(delivery) == "resumed"
    assert [len(message["files"]) for message in sent] == [2]
    run_all(pipe, sent)
    assert file_server.served["/rec/REC-2/pdf"] == 1


class Crash(BaseException):
    """The worker process dies here."""


def test_download_redelivered_after_the_file_was_put_in_place(
    pipeline: Built, file_server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe, sent = pipeline
    pipe.ingest(delivery_for(file_server, "REC-3"))
    [message] = sent

    def die(*args: object, **kwargs: object) -> None:
        raise Crash

    # The worker dies right after the renames: its results never reach the bookkeeping.
    runtime = batch_runtime(pipe)
    with monkeypatch.context() as patch:
        patch.setattr(pipe.books, "record_many", die)
        with pytest.raises(Crash):
            fetch_batch(runtime, message)
    runtime.files.shutdown()
    assert pipe.storage.exists("cases/REC-3/case.pdf")
    for path in ("case.pdf", "items/001-A"):  # the dead worker's locks expire
        pipe.books.redis.delete(lock_key("file", "cases/REC-3", path))
    assert run_all(pipe, sent) == ["stored", "stored"]  # adopted, not fetched again
    assert file_server.served["/rec/REC-3/pdf"] == 1


def test_sweep_resumes_a_case_whose_messages_were_lost(
    pipeline: Built, file_server: FileServer
) -> None:
    pipe, sent = pipeline
    pipe.ingest(delivery_for(file_server, "REC-4"))
    sent.clear()
    assert pipe.books.stuck(older_than_seconds=-1) == ["cases/REC-4"]
    assert pipe.intake.resume("cases/REC-4") == "resumed"
    run_all(pipe, sent)
    manifest = read_manifest(pipe.storage, "cases/REC-4")
    assert manifest is not None and manifest["status"] == "complete"
    assert pipe.books.stuck(older_than_seconds=-1) == []
    assert pipe.intake.resume("cases/REC-4") == "finished"


def test_stale_generation_is_ignored(pipeline: Built, file_server: FileServer) -> None:
    pipe, sent = pipeline
    first = delivery_for(file_server, "REC-5")
    pipe.ingest(first)
    old_jobs = list(sent)
    sent.clear()
    changed = make_delivery(
        samples.body(samples.case("REC-5", file_server.add("rec/REC-5/pdf2", samples.pdf(5000)))),
        {},
    )
    pipe.ingest(changed)
    assert run_all(pipe, old_jobs) == ["stale", "stale"]
    run_all(pipe, sent)
    manifest = read_manifest(pipe.storage, "cases/REC-5")
    assert manifest is not None and manifest["status"] == "complete"
    assert [f["path"] for f in manifest["files"]] == ["case.pdf"]
    assert file_server.hits["/rec/REC-5/pdf"] == 0
    assert pipe.storage.exists(f"cases/REC-5/history/{first['deliveryId']}.json")


def test_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    import os
    import time

    storage = LocalStorage(tmp_path)
    storage.tmp.mkdir(parents=True)
    old, fresh = storage.tmp / "old.part", storage.tmp / "fresh.part"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert storage.remove_stale_temp(600) == 1
    assert not old.exists() and fresh.exists()


def test_a_live_downloads_file_is_kept_however_long_it_is_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow host's bytes may sit in a buffer for minutes: the file's age says nothing. Its
    download's heartbeat (the file lock the sweep finds live) keeps it."""
    import os
    import time

    from worker.observe import ObservedStorage

    storage = LocalStorage(tmp_path)
    observed = ObservedStorage(storage)  # as workers run
    owner = "cases/SLOW/case.pdf"
    an_hour_ago = time.time() - 3600
    with storage.stage("cases/SLOW/case.pdf", owner=owner) as staged:
        staged.write(b"%PDF-")
        [part] = storage.tmp.glob("*.part")
        os.utime(part, (an_hour_ago, an_hour_ago))
        assert observed.remove_stale_temp(600, {owner, "cases/OTHER/case.pdf"}) == 0
        assert part.exists()
        # Its heartbeat stopped (the worker died): removed like any dead writer's.
        assert observed.remove_stale_temp(600, {"cases/OTHER/case.pdf"}) == 1
        assert not part.exists()
    with pytest.raises(OSError):  # its task is retried (an infrastructure error)
        staged.commit()


def test_a_case_the_sweep_cannot_resume_does_not_hold_up_lost_deliveries(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from casefetch.constants import ACTIVE_CASES_KEY, INGEST_QUEUE
    from worker.app import build_worker
    from worker.settings import WorkerSettings
    from worker.sweep import sweep_once

    settings = WorkerSettings(
        redis=RedisTarget(redis_server.db_url(8)),
        archive_dir=tmp_path / "archive",
        stuck_after_seconds=0,
        visibility_timeout_seconds=0,
    )
    app = build_worker(settings)
    client = app.casefetch.runtime.redis
    client.flushdb()
    # A stuck case whose manifest cannot be read (a disk fault, an operator's edit) ...
    broken = tmp_path / "archive" / "cases" / "BROKEN"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{not json")
    client.zadd(ACTIVE_CASES_KEY, {"cases/BROKEN": 0})
    # ... and an accepted delivery whose message was lost.
    delivery = make_delivery(samples.body(samples.case("LOST-1", "http://x.test/a.pdf")), {})
    app.casefetch.runtime.pipeline.books.enqueue(delivery)
    client.delete(INGEST_QUEUE)

    sweep_once(app.casefetch.runtime, settings)
    assert client.llen(INGEST_QUEUE) == 1, "the lost delivery was not queued again"
    assert "could not resume cases/BROKEN" in caplog.text
    client.flushdb()


def test_work_postponed_by_an_outage_comes_back_within_half_a_minute() -> None:
    from worker.tasks import backoff

    assert [backoff(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff(500) == 30  # retries count the "file busy" ones too


def test_a_batch_syncs_folders_before_it_records_and_survives_a_crash_before_that(
    pipeline: Built, file_server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe, sent = pipeline
    cf = "REC-B"
    images = [
        samples.item(f"I{i}", file_server.add(f"rec/{cf}/{i}", samples.png())) for i in range(5)
    ]
    body = samples.body(samples.case(cf, file_server.add(f"rec/{cf}/pdf", samples.pdf()), images))
    pipe.ingest(make_delivery(body, {}))
    [message] = sent
    events: list[str] = []
    sync, record = pipe.storage.sync_folders, pipe.books.record_many

    def spy_sync(keys: Any) -> None:
        keys = list(keys)
        events.append(f"sync {len(keys)}")
        sync(keys)

    def spy_record(*args: Any, **kwargs: Any) -> Any:
        events.append("record")
        return record(*args, **kwargs)

    def die(*args: object, **kwargs: object) -> None:
        raise Crash

    runtime = batch_runtime(pipe, threads=4)
    # The worker dies once a first group of files is renamed into place, before any is
    # recorded (the files still under way end staged: verified, not under their names).
    with monkeypatch.context() as patch:
        patch.setattr(pipe.books, "record_many", die)
        with pytest.raises(Crash):
            fetch_batch(runtime, message)
    runtime.files.shutdown()
    assert pipe.books.results(f"cases/{cf}") == {}
    names = ["pdf", *map(str, range(5))]
    keys = ["case.pdf", *(f"items/{i:03d}-I{i - 1}.png" for i in range(1, 6))]
    placed = [pipe.storage.exists(f"cases/{cf}/{key}") for key in keys]
    assert any(placed)
    # The dead worker's locks expire (their time to live is the visibility timeout).
    for name in ["case.pdf", *(f"items/{i:03d}-I{i - 1}" for i in range(1, 6))]:
        pipe.books.redis.delete(lock_key("file", f"cases/{cf}", name))
    runtime.files = ThreadPoolExecutor(4)
    with monkeypatch.context() as patch:
        patch.setattr(pipe.storage, "sync_folders", spy_sync)
        patch.setattr(pipe.books, "record_many", spy_record)
        outcomes, postponed = fetch_batch(runtime, message)
    runtime.files.shutdown()
    assert postponed is None and outcomes.count("stored") == 6
    # Every commit synced the folders of its files before it recorded them.
    assert events and all(
        events[i].startswith("sync") and events[i + 1] == "record" for i in range(0, len(events), 2)
    )
    served = [file_server.served[f"/rec/{cf}/{name}"] for name in names]
    manifest = read_manifest(pipe.storage, f"cases/{cf}")
    assert manifest is not None
    stored = sum(1 for e in manifest["files"] if e["status"] == "stored")
    assert stored == 6
    # What was in place is adopted; what the crash left staged (never under its name) is
    # fetched again.
    assert [n for n, was in zip(served, placed, strict=True) if was] == [1] * sum(placed)
    assert all(n <= 2 for n in served)


def test_an_inbox_entry_gives_back_its_delivery_whatever_wrote_it() -> None:
    import base64

    from casefetch.protocol import delivery_from_inbox, inbox_entry

    delivery = make_delivery('{"cfRef": "é"}'.encode(), {"X-Trace": "1"})
    assert delivery_from_inbox(delivery["deliveryId"], inbox_entry(delivery)) == delivery
    # Bytes nobody can read are kept as the body, for the quarantine, not dropped.
    kept = delivery_from_inbox("d-9", b"\xff{broken")
    assert kept["deliveryId"] == "d-9" and kept.get("body") is None
    assert kept.get("bodyBase64") == "/3ticm9rZW4="
    odd = b'{"properties": {}, "body": "not base64 of a task"}'
    odd_kept = delivery_from_inbox("d-8", odd).get("bodyBase64")
    assert odd_kept is not None and base64.b64decode(odd_kept) == odd


def test_the_ingest_task_reads_its_delivery_from_the_inbox_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    import base64
    import json

    from casefetch.constants import INGEST_QUEUE, INGEST_TASK
    from worker import archive
    from worker.app import build_worker
    from worker.settings import WorkerSettings

    app = build_worker(
        WorkerSettings(redis=RedisTarget(redis_server.db_url(9)), archive_dir=tmp_path / "archive")
    )
    client = app.casefetch.runtime.redis
    client.flushdb()
    try:
        unarchivable = make_delivery(b'{"cfRef": "NO-PDF"}', {})
        app.casefetch.runtime.pipeline.books.enqueue(unarchivable)
        [message] = client.lrange(INGEST_QUEUE, 0, -1)
        [ref], _, _ = json.loads(base64.b64decode(json.loads(message)["body"]))
        assert ref == {
            "deliveryId": unarchivable["deliveryId"],
            "receivedAt": unarchivable["receivedAt"],
        }
        ingest = app.tasks[INGEST_TASK]
        assert ingest.apply(args=[ref]).get() == "quarantined"
        storage = app.casefetch.runtime.pipeline.storage
        record = storage.read_bytes(archive.quarantine_key(unarchivable["deliveryId"]))
        assert json.loads(record)["body"] == unarchivable["body"]
        assert client.hlen(INBOX_KEY) == 0 and client.zcard(INBOX_INDEX_KEY) == 0
        # The same message again (a redelivery after its ack was lost): nothing to do.
        assert ingest.apply(args=[ref]).get() == "duplicate"
        # An entry nobody can read is quarantined as it is, not dropped.
        client.hset(INBOX_KEY, "d-broken", b"\xff{broken")
        assert (
            ingest.apply(args=[{"deliveryId": "d-broken", "receivedAt": ""}]).get() == "quarantined"
        )
        broken = json.loads(storage.read_bytes(archive.quarantine_key("d-broken")))
        assert base64.b64decode(broken["bodyBase64"]) == b"\xff{broken"
    finally:
        client.flushdb()


def test_a_download_that_finds_its_file_held_retries_a_bounded_number_of_times(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A file another worker holds is that worker's to record; once a dead holder's lock
    would have expired, the message stops coming back (the sweep covers the rest)."""
    from casefetch.constants import DOWNLOAD_TASK
    from worker.app import build_worker
    from worker.settings import WorkerSettings
    from worker.tasks import BUSY_RETRY_SECONDS, max_busy_retries

    settings = WorkerSettings(
        redis=RedisTarget(redis_server.db_url(9)),
        archive_dir=tmp_path,
        visibility_timeout_seconds=12,
    )
    app = build_worker(settings)
    books = app.casefetch.runtime.pipeline.books
    books.redis.flushdb()
    try:
        books.start("cases/HELD", "g-1", [0])
        holder = books.locks.acquire(lock_key("file", "cases/HELD", "case.pdf"))
        message = {
            "case": "cases/HELD",
            "gen": "g-1",
            "cfRef": "HELD",
            "files": [
                {
                    "index": 0,
                    "path": "case.pdf",
                    "kind": "case_pdf",
                    "sourceUrl": "http://127.0.0.1:9/never-fetched",
                }
            ],
        }
        # Eagerly, each retry runs at once, nested: this returns only once they stop.
        result = app.tasks[DOWNLOAD_TASK].apply(args=[message])
        assert result.get() == "busy"
        tries = max_busy_retries(settings)
        assert tries == 4 and tries * BUSY_RETRY_SECONDS >= settings.visibility_timeout_seconds
        assert books.redis.get(holder.key) == holder.token.encode()  # left to its holder
    finally:
        app.casefetch.runtime.files.shutdown()
        books.redis.flushdb()
