"""Fault injection: real processes killed and restarted while real traffic flows.

Each scenario prints a summary line (sent, accepted, archived, quarantined, lost, duplicate
writes) at the end of the run. Recovery here is quick because the workers run with a 10 s
visibility timeout; production uses 60 s (see docs/reliability.md).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from casefetch.constants import DOWNLOAD_QUEUE, INBOX_KEY, INGEST_QUEUE
from casefetch_tools.redis_server import RedisServer
from tests import samples
from tests.archive_view import Archive
from tests.faults import FAST_RECOVERY, Tally, check_archive, duplicate_writes, settle_or_explain
from tests.fileserver import FileServer
from tests.processes import ReceiverProcess, WorkerProcess, receiver_env, worker_env
from tests.samples import sha
from tests.waiting import wait_for
from worker.archive import CATALOG

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A Redis (fsync always), a file server and a receiver of this test's own."""
    server = RedisServer(tmp_path / "redis", appendfsync="always").start()
    files = FileServer().start()
    receiver = ReceiverProcess(receiver_env(server.url), tmp_path / "receiver.log").start()
    workers: list[WorkerProcess] = []

    def add_worker(*args: str, **env: str) -> WorkerProcess:
        process = WorkerProcess(
            worker_env(server.url, tmp_path / "archive", **{**FAST_RECOVERY, **env}),
            tmp_path / f"worker{len(workers)}.log",
            *args,
        )
        workers.append(process)
        return process.start()

    yield {
        "redis": server,
        "files": files,
        "receiver": receiver,
        "add_worker": add_worker,
        "archive": Archive(tmp_path / "archive"),
        "workers": workers,
    }
    for process in workers:
        process.stop(signal.SIGKILL)
    receiver.stop()
    files.stop()
    server.stop()


def test_worker_killed_mid_download_loses_nothing(
    stack: dict[str, Any], report_line: Callable[[str], None]
) -> None:
    files: FileServer = stack["files"]
    receiver: ReceiverProcess = stack["receiver"]
    archive: Archive = stack["archive"]
    tally = Tally()
    expected: dict[str, dict[str, bytes]] = {}

    def make_case(i: int, slow: bool = False) -> tuple[str, bytes]:
        cf = f"KILL-{i:03d}"
        pdf = samples.pdf(300_000 if slow else 3_000 + i)
        images = [samples.png(seed=i), samples.jpeg(2_000 + i, seed=i)]
        pdf_url = files.add(f"{cf}/pdf", pdf, chunk_delay=0.4 if slow else 0.0)
        image_urls = [files.add(f"{cf}/img{n}", data) for n, data in enumerate(images)]
        expected[cf] = {pdf_url: pdf, **dict(zip(image_urls, images, strict=True))}
        items = [samples.item(f"IT-{n}", url) for n, url in enumerate(image_urls)]
        return cf, samples.body(samples.case(cf, pdf_url + "?sig=1", items))

    # Phase 1: one worker, a few slow cases; SIGKILL it while it streams them.
    first = stack["add_worker"]("--concurrency", "4")
    slow = [make_case(i, slow=True) for i in range(3)]
    for cf, body in slow:
        assert tally.post(receiver, cf, body) == 202

    def downloading() -> bool:
        return sum(files.in_flight_paths[f"/{cf}/pdf"] for cf, _ in slow) >= 2

    wait_for(downloading, timeout=30, message="slow downloads to be under way")
    first.stop(signal.SIGKILL)
    interrupted = [cf for cf, _ in slow if files.in_flight_paths[f"/{cf}/pdf"]]
    assert not any((archive.case(cf) / "case.pdf").exists() for cf in interrupted)

    # Phase 2: the killed worker restarts, a second one joins; 200 more cases arrive, a tenth
    # of them delivered twice at the same moment.
    first.start()
    stack["add_worker"]("--concurrency", "4")
    cases = [make_case(i) for i in range(3, 203)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = [pool.submit(tally.post, receiver, cf, body) for cf, body in cases]
        jobs += [pool.submit(tally.post, receiver, cf, body) for cf, body in cases[::10]]
        assert all(job.result() == 202 for job in jobs)

    def all_settled() -> bool:
        return all((archive.manifest(cf) or {}).get("status") == "complete" for cf in expected)

    settle_or_explain(
        all_settled,
        tally,
        archive,
        stack["workers"],
        lambda: redis.Redis.from_url(stack["redis"].url),
    )
    refetches = check_archive(archive, files, expected)
    duplicates = duplicate_writes(stack["workers"])
    for cf in interrupted:
        assert files.hits[f"/{cf}/pdf"] >= 2, "the interrupted download was fetched again"
    leftovers = [
        p
        for p in archive.root.rglob("*")
        if p.is_file()
        and "/.tmp/" not in str(p)
        and p.name not in {"case.json", "manifest.json", "case.pdf", "index.html"}
        and "/items/" not in str(p)
        and not (p.parent == archive.root and p.name.startswith(CATALOG))
    ]
    assert leftovers == []
    report_line(tally.line("worker SIGKILL mid-download", archive, duplicates, refetches))
    assert len(tally.accepted) == len(expected) and duplicates == 0
    assert not (archive.root / "quarantine").exists()


def test_redis_outage_under_load(stack: dict[str, Any], report_line: Callable[[str], None]) -> None:
    files: FileServer = stack["files"]
    receiver: ReceiverProcess = stack["receiver"]
    server: RedisServer = stack["redis"]
    archive: Archive = stack["archive"]
    stack["add_worker"]("--concurrency", "4")
    pdf = samples.pdf(4_000)
    pdf_url = files.add("outage/pdf", pdf)
    tally = Tally()
    during_outage: list[int] = []
    outage_seconds: list[float] = []
    phase = {"name": "before"}
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set() and i < 2_000:
            cf = f"OUT-{i:04d}"
            current = phase["name"]
            started = time.monotonic()
            status = tally.post(receiver, cf, samples.body(samples.case(cf, pdf_url)))
            if current == "down" and phase["name"] == "down":
                during_outage.append(status)
                outage_seconds.append(time.monotonic() - started)
            i += 1

    thread = threading.Thread(target=load)
    thread.start()
    try:
        wait_for(lambda: len(tally.accepted) >= 30, timeout=60, message="load before the outage")
        server.kill()
        phase["name"] = "down"
        wait_for(lambda: len(during_outage) >= 20, timeout=60, message="requests during the outage")
        phase["name"] = "restarting"
        server.start()
        accepted_before = len(tally.accepted)
        wait_for(
            lambda: len(tally.accepted) >= accepted_before + 30,
            timeout=60,
            message="load after the outage",
        )
    finally:
        stop.set()
        thread.join()

    def all_archived() -> bool:
        return all(
            (archive.manifest(cf) or {}).get("status") == "complete" for cf in tally.accepted
        )

    settle_or_explain(
        all_archived, tally, archive, stack["workers"], lambda: redis.Redis.from_url(server.url)
    )
    report_line(
        tally.line(
            "redis SIGKILL + restart under load", archive, duplicate_writes(stack["workers"])
        )
        + f" outage_requests={len(during_outage)} outage_503={during_outage.count(503)}"
        + f" outage_max_answer_s={max(outage_seconds):.2f}"
    )
    assert during_outage and all(status == 503 for status in during_outage)
    assert not (archive.root / "quarantine").exists(), "an outage is not the payload's fault"
    assert max(outage_seconds) < 5, "a 503 must come promptly, not after a hang"


def test_sweep_requeues_an_accepted_delivery_whose_message_was_lost(
    stack: dict[str, Any], report_line: Callable[[str], None]
) -> None:
    files: FileServer = stack["files"]
    receiver: ReceiverProcess = stack["receiver"]
    archive: Archive = stack["archive"]
    client = redis.Redis.from_url(stack["redis"].url)
    cf = "INBOX-1"
    body = samples.body(samples.case(cf, files.add("inbox/pdf", samples.pdf())))
    tally = Tally()
    assert tally.post(receiver, cf, body) == 202
    # As if a worker popped the message and Redis died before kombu noted it unacknowledged.
    assert client.delete(INGEST_QUEUE) == 1
    stack["add_worker"](CELERY_VISIBILITY_TIMEOUT="5", SWEEP_STUCK_AFTER_SECONDS="2")
    manifest = archive.settled(cf, timeout=60)
    assert manifest["status"] == "complete"
    assert client.hlen(INBOX_KEY) == 0
    report_line(
        tally.line(
            "accepted delivery's message deleted, sweep",
            archive,
            duplicate_writes(stack["workers"]),
        )
    )


def test_sweep_finishes_a_case_whose_messages_were_lost(
    stack: dict[str, Any], report_line: Callable[[str], None]
) -> None:
    files: FileServer = stack["files"]
    receiver: ReceiverProcess = stack["receiver"]
    archive: Archive = stack["archive"]
    client = redis.Redis.from_url(stack["redis"].url)
    stack["add_worker"]("--queues", INGEST_QUEUE, SWEEP_STUCK_AFTER_SECONDS="2")
    pdf, png = samples.pdf(), samples.png()
    cf = "SWEEP-1"
    body = samples.body(
        samples.case(
            cf, files.add("sweep/pdf", pdf), [samples.item("A", files.add("sweep/a", png))]
        )
    )
    tally = Tally()
    assert tally.post(receiver, cf, body) == 202
    wait_for(lambda: client.llen(DOWNLOAD_QUEUE) == 2, message="download messages queued")
    assert (archive.manifest(cf) or {}).get("status") == "pending"
    client.delete(DOWNLOAD_QUEUE)  # the messages are lost

    stack["add_worker"]("--queues", DOWNLOAD_QUEUE)
    manifest = archive.settled(cf, timeout=60)
    assert manifest["status"] == "complete"
    assert [f["sha256"] for f in manifest["files"]] == [sha(pdf), sha(png)]
    report_line(
        tally.line("download messages deleted, sweep", archive, duplicate_writes(stack["workers"]))
    )
    json.dumps(manifest)
