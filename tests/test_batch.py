"""How a case's files are cut into download messages, read back, and handed on."""

from __future__ import annotations

from pathlib import Path

from casefetch.constants import DOWNLOAD_QUEUE
from casefetch.redis_target import RedisTarget
from casefetch_tools.redis_server import RedisServer
from worker.app import build_worker
from worker.ingest import BATCH_FILES, batches
from worker.messages import DownloadMessage, FileRef, file_jobs
from worker.settings import WorkerSettings


def refs(count: int) -> list[FileRef]:
    return [
        {"index": i, "path": f"items/{i:03d}-X", "kind": "item_image", "sourceUrl": f"http://h/{i}"}
        for i in range(count)
    ]


def test_batches_are_few_and_even() -> None:
    files = refs(BATCH_FILES + 3)
    cut = batches(files, BATCH_FILES)
    assert len(cut) == 2
    assert sorted(len(b) for b in cut) == [(BATCH_FILES + 3) // 2, (BATCH_FILES + 4) // 2]
    assert sorted(f["index"] for b in cut for f in b) == list(range(BATCH_FILES + 3))
    assert batches([], BATCH_FILES) == []
    assert [len(b) for b in batches(files[:1], BATCH_FILES)] == [1]


def test_a_large_case_spreads_over_many_messages() -> None:
    cut = batches(refs(1000), BATCH_FILES)
    assert len(cut) == -(-1000 // BATCH_FILES)
    assert max(len(b) for b in cut) <= BATCH_FILES


def test_file_jobs_of_a_batch() -> None:
    message: DownloadMessage = {
        "case": "cases/B",
        "gen": "g",
        "cfRef": "B",
        "files": [
            {"index": 0, "path": "case.pdf", "kind": "case_pdf", "sourceUrl": "http://h/p"},
            {"index": 2, "path": "items/002-X", "kind": "item_image", "sourceUrl": "http://h/x"},
        ],
    }
    jobs = file_jobs(message)
    assert [j["index"] for j in jobs] == [0, 2]
    assert all(j["case"] == "cases/B" and j["gen"] == "g" and "files" not in j for j in jobs)


def test_an_ingest_keeps_its_first_download_message_and_queues_the_others(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.db_url(9)
    runtime = build_worker(
        WorkerSettings(redis=RedisTarget(url), archive_dir=tmp_path)
    ).casefetch.runtime
    runtime.redis.flushdb()
    messages = [{"case": "cases/K", "gen": "g", "files": [{"index": i}]} for i in range(3)]
    with runtime.keep_first_download() as kept:
        for message in messages:
            runtime.send_download(message)
    assert kept == messages[:1]
    assert runtime.redis.llen(DOWNLOAD_QUEUE) == 2
    runtime.send_download(messages[0])  # outside an ingest (the sweep): always queued
    assert runtime.redis.llen(DOWNLOAD_QUEUE) == 3
    with runtime.keep_first_download(keep=False) as kept:  # a worker not downloading
        runtime.send_download(messages[0])
    assert kept == [] and runtime.redis.llen(DOWNLOAD_QUEUE) == 4
    runtime.files.shutdown()
