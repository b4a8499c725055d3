"""Ingest: validate a delivery, claim its case's folder, make it the case's payload (or keep
it in history), plan the manifest and queue the files still to fetch.

Every step is safe to run twice: a redelivered message (after a crash) or a duplicate
webhook finds the work done, or in hand under a lock, and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from casefetch.protocol import Delivery, accepted_before, delivery_body
from worker import archive, casefiles
from worker.bookkeeping import Bookkeeping
from worker.errors import Unarchivable
from worker.locks import HeldLock
from worker.manifest import (
    CaseStatus,
    Entry,
    FileStatus,
    Manifest,
    new_manifest,
    pending_indices,
    plan,
    reuse,
)
from worker.messages import DownloadMessage, FileRef
from worker.quarantine import quarantine
from worker.schemas import CaseCheck, StepAction, check_case
from worker.settle import Settler
from worker.storage import Storage

log = logging.getLogger("casefetch.worker")

#: How download work is handed on: one message per batch of a case's files (see batches).
SendDownload = Callable[[DownloadMessage], None]

#: Files per download message. Celery's cost per task is as much as fetching a small file
#: (docs/benchmarks.md#download-batches): a batch pays it once for several files, while a
#: large case still spreads over many messages, hence over every worker.
BATCH_FILES = 16


@dataclass
class Ingest:
    storage: Storage
    books: Bookkeeping
    settler: Settler
    send_download: SendDownload

    def ingest(self, delivery: Delivery) -> str:
        """Archive or quarantine one delivery; return what happened (for logs and tests)."""
        outcome = self._ingest(delivery)
        self.books.delivered(delivery["deliveryId"])
        return outcome

    def _ingest(self, delivery: Delivery) -> str:
        body = delivery_body(delivery)
        try:
            check = check_case(_decode(body))
        except Unarchivable as exc:
            quarantine(self.storage, delivery, exc.reason, exc.errors)
            return "quarantined"
        # Folders that differ only by case are one folder on a case-insensitive disk: claim
        # under a case-folded lock, so two such cfRefs cannot both take it (see _claim).
        with self.books.lock("claim", archive.case_dir(check.cf_ref).lower(), wait_seconds=30):
            case = self._claim(check.cf_ref)
            with self.books.lock("case", case, wait_seconds=30) as lock:
                return self._plan(case, check, body, delivery["deliveryId"], lock)

    def _claim(self, cf_ref: str) -> str:
        """The case's folder: ``cases/<safe name>``, unless that folder already holds another
        cfRef (on a case-insensitive disk, ``cases/cf-1`` *is* ``cases/CF-1``); then the
        encoded name, which differs for every cfRef whatever the disk."""
        case = archive.case_dir(cf_ref)
        owner = self._owner(case)
        return case if owner is None or owner == cf_ref else archive.case_dir(cf_ref, encode=True)

    def _owner(self, case: str) -> str | None:
        manifest = casefiles.read_manifest(self.storage, case)
        if manifest is not None:
            return str(manifest.get("cfRef"))
        current = casefiles.read(self.storage, case, archive.CASE_JSON)
        return str(json.loads(current).get("cfRef")) if current is not None else None

    def _plan(
        self, case: str, check: CaseCheck, body: bytes, delivery_id: str, lock: HeldLock
    ) -> str:
        """Make ``body`` the case's payload, unless it is the one the manifest describes
        already (an identical re-delivery, or this delivery retried) or an older delivery than
        the one it describes (it goes straight to history).

        The manifest is written last and is what counts: it records the deliveryId and the
        sha256 of the payload it describes. A ``case.json`` that differs from that is the
        write of an interrupted delivery, which is still in the inbox and is retried: it is
        never taken for the payload the manifest describes.
        """
        previous = casefiles.read_manifest(self.storage, case)
        digest = _sha256(body)
        if previous is not None:
            current = None
            described = previous.get("payloadSha256")
            if described is None:  # a manifest from before it was recorded: case.json's
                current = casefiles.read(self.storage, case, archive.CASE_JSON)
                described = _sha256(current) if current is not None else None
            if digest == described:
                return self._same_payload(case, check, previous, delivery_id, lock)
            if delivery_id != previous["deliveryId"] and accepted_before(
                delivery_id, previous.get("latestDeliveryId") or previous["deliveryId"]
            ):
                self._keep_history(case, delivery_id, body)
                log.info(
                    "delivery %s of %s is older than the archived one: kept in history",
                    delivery_id,
                    check.cf_ref,
                )
                return "superseded"
            if current is None:
                current = casefiles.read(self.storage, case, archive.CASE_JSON)
            if current is not None and _sha256(current) == described:
                self._keep_history(case, str(previous["deliveryId"]), current)
        # Durable with the manifest, below: one sync of the case folder for both.
        self.storage.write_bytes(archive.case_key(case, archive.CASE_JSON), body, sync_folder=False)
        files, warnings = plan(check)
        manifest = new_manifest(check, delivery_id, reuse(files, previous), warnings)
        manifest["payloadSha256"] = digest
        if previous is not None:
            manifest["replaced"] = _orphans(previous, manifest)
        casefiles.write_manifest(self.storage, case, manifest, lock)
        self.dispatch(case, manifest, lock)
        return "planned"

    def _same_payload(
        self, case: str, check: CaseCheck, manifest: Manifest, delivery_id: str, lock: HeldLock
    ) -> str:
        latest = manifest.get("latestDeliveryId") or manifest["deliveryId"]
        if delivery_id != latest and accepted_before(latest, delivery_id):
            # Accepted after the delivery the manifest names: an older changed payload
            # processed later must still go to history, not replace this one.
            manifest = {**manifest, "latestDeliveryId": delivery_id}
            casefiles.write_manifest(self.storage, case, manifest, lock)
        if manifest["status"] != CaseStatus.PENDING:
            log.info("identical re-delivery of %s: nothing to do", check.cf_ref)
            return "duplicate"
        # Same payload, work under way (or lost): make sure every pending file is queued.
        self.dispatch(case, manifest, lock, skip_held=True)
        return "resumed"

    def _keep_history(self, case: str, delivery_id: str, payload: bytes) -> None:
        """``history/<deliveryId>.json``, unless it is there already: never overwritten."""
        key = archive.case_key(case, archive.history_path(delivery_id))
        if not self.storage.exists(key):
            self.storage.write_bytes(key, payload)

    def dispatch(
        self, case: str, manifest: Manifest, lock: HeldLock, skip_held: bool = False
    ) -> int:
        """Queue the files of ``manifest`` still to fetch (settle it, under the case's
        ``lock``, if there are none); return how many were queued.
        ``skip_held``: leave out the files a live worker holds the lock of (a resume, a
        re-delivery): that worker records them, and a message more would only wait."""
        gen = manifest["deliveryId"]
        indices = pending_indices(manifest)
        if self.books.generation(case) != gen:
            self.books.start(case, gen, indices)
        else:
            self.books.touch(case)
            indices = self.books.remaining(case)
        if not indices:
            # Callers hold the case lock already (it is not re-entrant).
            self.settler.settle_locked(case, gen, lock)
            return 0
        files = [_job(index, manifest["files"][index]) for index in indices]
        if skip_held:
            held = self.books.held(case, [f["path"] for f in files])
            files = [f for f, busy in zip(files, held, strict=True) if not busy]
        for batch in batches(files, BATCH_FILES):
            self.send_download(
                {"case": case, "gen": gen, "cfRef": manifest["cfRef"], "files": batch}
            )
        return len(files)

    def resume(self, case: str, wait_seconds: float = 30) -> str:
        """Re-queue what a stuck case still needs (its messages were lost or its worker
        died), except the files a live worker holds: ``resumed``, ``in hand`` (every file
        left is held) or ``finished``."""
        with self.books.lock("case", case, wait_seconds=wait_seconds) as lock:
            manifest = casefiles.read_manifest(self.storage, case)
            if manifest is None or manifest["status"] != CaseStatus.PENDING:
                self.books.finish(case)
                return "finished"
            queued = self.dispatch(case, manifest, lock, skip_held=True)
            return "resumed" if queued else "in hand"


def batches(files: list[FileRef], size: int) -> list[list[FileRef]]:
    """``files`` cut into as few batches of at most ``size`` as possible, of even lengths
    (11 files make 6 + 5, not 8 + 3, so the batches of one case end together)."""
    if not files:
        return []
    count = -(-len(files) // size)
    return [files[i::count] for i in range(count)]


def _job(index: int, entry: Entry) -> FileRef:
    job: FileRef = {
        "index": index,
        "path": entry["path"],
        "kind": entry["kind"],
        "sourceUrl": entry["sourceUrl"],
    }
    if entry.get("stepAction") == StepAction.VIDEO:
        job["stepAction"] = StepAction.VIDEO.value  # the one step whose file may be a video
    return job


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise Unarchivable("not_json", {"_schema": [f"Body is not UTF-8: {exc.reason}."]}) from exc
    except ValueError as exc:
        raise Unarchivable("not_json", {"_schema": [f"Body is not JSON: {exc}."]}) from exc
    except RecursionError as exc:
        raise Unarchivable("not_json", {"_schema": ["Body is nested too deeply."]}) from exc


def _orphans(previous: Manifest, manifest: Manifest) -> list[str]:
    """Files an earlier delivery stored that the new one may no longer reference, with
    those the earlier one was to remove itself (it may not have settled)."""
    now = {e["path"] for e in manifest["files"]}
    earlier = [
        *previous.get("replaced", []),
        *(e["path"] for e in previous.get("files", []) if e.get("status") == FileStatus.STORED),
    ]
    return [path for path in dict.fromkeys(earlier) if path not in now]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
