"""What the fault-injection scenarios (tests/test_faults.py, tests/test_failover.py) share:
the tally of what was sent and accepted, and how the archive is checked afterwards (every
accepted case complete with the bytes served, duplicate writes counted from the workers'
logs)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from casefetch.constants import DOWNLOAD_QUEUE, INBOX_KEY, INGEST_QUEUE
from tests.archive_view import Archive
from tests.fileserver import FileServer
from tests.processes import ReceiverProcess, WorkerProcess
from tests.samples import sha
from tests.waiting import wait_for

FAST_RECOVERY = {
    "CELERY_VISIBILITY_TIMEOUT": "10",
    "SWEEP_INTERVAL_SECONDS": "1",
    "SWEEP_STUCK_AFTER_SECONDS": "20",
    "DOWNLOAD_MAX_ATTEMPTS": "5",
    "DOWNLOAD_TIMEOUT_SECONDS": "5",
}


@dataclass
class Tally:
    """What a scenario sent and what became of it."""

    sent: int = 0
    accepted: dict[str, bytes] = field(default_factory=dict)  # cfRef → body of last 202
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def post(
        self,
        receiver: ReceiverProcess,
        cf: str,
        body: bytes,
        headers: dict[str, str] | None = None,
    ) -> int:
        try:
            status, _ = receiver.post(body, headers)
        except Exception:
            status = 0
        with self.lock:
            self.sent += 1
            if status == 202:
                self.accepted[cf] = body
            else:
                self.refused += 1
        return status

    def line(self, name: str, archive: Archive, duplicate_writes: int, refetches: int = 0) -> str:
        archived = sum(
            1 for cf in self.accepted if (archive.manifest(cf) or {}).get("status") == "complete"
        )
        quarantine = archive.root / "quarantine"
        quarantined = len(list(quarantine.glob("*.json"))) if quarantine.exists() else 0
        lost = len(self.accepted) - archived - quarantined
        return (
            f"{name}: sent={self.sent} accepted={len(self.accepted)} archived={archived} "
            f"quarantined={quarantined} lost={lost} duplicate_writes={duplicate_writes} "
            f"refetched_after_fault={refetches}"
        )


def settle_or_explain(
    settled: Callable[[], bool],
    tally: Tally,
    archive: Archive,
    workers: list[WorkerProcess],
    client: Callable[[], redis.Redis],
    timeout: float = 180,
) -> None:
    """Wait for ``settled``; on timeout, fail with what an operator would look at (``client``
    opens a connection to the Redis the workers use)."""
    try:
        wait_for(settled, timeout=timeout, interval=0.5, message="every accepted case")
    except AssertionError as exc:
        unsettled = {
            cf: (archive.manifest(cf) or {}).get("status")
            for cf in tally.accepted
            if (archive.manifest(cf) or {}).get("status") != "complete"
        }
        try:
            with client() as connection:
                queues: dict[str, int | str] = {
                    name: connection.llen(name) for name in (INGEST_QUEUE, DOWNLOAD_QUEUE)
                }
                queues["inbox"] = connection.hlen(INBOX_KEY)
        except redis.RedisError as error:
            queues = {"redis": str(error)}
        tails = "\n".join(
            f"--- {process.log_path.name} ({process.state()})\n"
            + "\n".join(process.log().splitlines()[-15:])
            for process in workers
        )
        raise AssertionError(
            f"{exc}: {len(unsettled)} not complete, e.g. "
            f"{dict(list(unsettled.items())[:10])}; queues {queues}\n"
            f"{tails}"
        ) from None


def check_archive(
    archive: Archive, files: FileServer, expected: dict[str, dict[str, bytes]]
) -> int:
    """Every case complete with the bytes served; return how many whole fetches were repeated."""
    refetches = 0
    for cf, contents in expected.items():
        manifest = archive.manifest(cf)
        assert manifest is not None and manifest["status"] == "complete", (cf, manifest)
        by_source = {f["sourceUrl"].split("?")[0]: f for f in manifest["files"]}
        for url, data in contents.items():
            entry = by_source[url]
            assert entry["sha256"] == sha(data) and entry["bytes"] == len(data)
            assert (archive.case(cf) / entry["path"]).read_bytes() == data
            refetches += max(0, files.served["/" + url.split("/", 3)[3]] - 1)
    return refetches


def duplicate_writes(workers: list[WorkerProcess]) -> int:
    """Files put in place more than once, counted from the workers' logs.

    A worker logs ``storing <key>`` just before renaming a file into place, so a rename is
    never missed. A worker killed between that line and the rename leaves a line without a
    rename; the worker that takes the file over then finds nothing in place and says so
    ("died before putting it in place"): that line cancels the "storing" before it. A worker
    killed before it logged "storing" leaves nothing to cancel, so such a line cancels only a
    "storing" logged earlier (lines in timestamp order, one clock for all; a log keeps its
    own order).
    """
    events: list[tuple[str, int, str]] = []  # (timestamp, +1 storing / -1 died, key)
    for process in workers:
        for line in process.log().splitlines():
            try:
                record = json.loads(line)
                message, stamp = str(record["msg"]), str(record["ts"])
            except (ValueError, KeyError, TypeError):
                continue
            if "storing cases/" in message:
                events.append((stamp, 1, message.split("storing ", 1)[1].split(" ", 1)[0]))
            elif "died before putting it in place" in message:
                events.append((stamp, -1, message.split("not adopting ", 1)[1].split(":", 1)[0]))
    assert any(kind == 1 for _, kind, _ in events), (
        "no 'storing' line in the workers' logs: the count would be meaningless"
    )
    stores: dict[str, int] = {}
    for _, kind, key in sorted(events, key=lambda event: event[0]):
        stores[key] = max(0, stores.get(key, 0) + kind)
    return sum(max(0, count - 1) for count in stores.values())


#: The tracebacks a failover may leave, both logged by Celery or kombu as they go on:
#: - "Couldn't ack": an acknowledgement the dying primary cut off. The message stays in
#:   kombu's unacked set and comes back after the visibility timeout; its task then finds
#:   its files done.
#: - "Unrecoverable error": the race in kombu's Redis transport that docs/reliability.md
#:   ("Redis outages") describes (closing the lost connection, kombu builds a client from a
#:   connection already released), and the same error again as Celery stops ("Error on
#:   stopping Hub"); `casefetch worker` starts Celery again in the same process.
EXPECTED_TRACEBACKS = ("Couldn't ack", "Unrecoverable error", "Error on stopping Hub")


def tracebacks(logs: dict[str, str]) -> tuple[list[str], int]:
    """The first line of every unexpected traceback in ``logs`` (name: text of a log of
    JSON lines), and how many expected ones there were."""
    unexpected, expected = [], 0
    for name, text in logs.items():
        for line in text.splitlines():
            if "Traceback" not in line:
                continue
            try:
                message = str(json.loads(line)["msg"])
            except (ValueError, KeyError, TypeError):
                message = line
            if message.startswith(EXPECTED_TRACEBACKS):
                expected += 1
            else:
                unexpected.append(f"{name}: {message[:200]}")
    return unexpected, expected
