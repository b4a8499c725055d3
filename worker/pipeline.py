"""What the tasks do: validate and plan a case, fetch its files, settle its manifest.

Every step is safe to run twice: a redelivered message (after a crash) or a duplicate
webhook finds the work done, or in hand under a lock, and changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from casefetch import codec, logs
from casefetch.protocol import Delivery, accepted_before, delivery_body
from worker import archive
from worker.bookkeeping import Bookkeeping, Busy, Claim
from worker.catalog import Catalog, row_for
from worker.download import FetchResult, FileFetcher
from worker.errors import DownloadError, NotFound
from worker.locks import HeldLock
from worker.manifest import (
    CaseStatus,
    Entry,
    FileStatus,
    Manifest,
    new_manifest,
    parse_json,
    pending_indices,
    plan,
    reuse,
    settle,
)
from worker.page import render_case
from worker.schemas import CaseCheck, Unarchivable, check_case
from worker.sniff import FileKind, FileType
from worker.storage import Staged, Storage

log = logging.getLogger("casefetch.worker")

#: How download work is handed on: one message per batch of a case's files (see batches).
SendDownload = Callable[[dict[str, Any]], None]

#: Files per download message. Celery's cost per task is as much as fetching a small file
#: (docs/benchmarks.md#download-batches): a batch pays it once for several files, while a
#: large case still spreads over many messages, hence over every worker.
BATCH_FILES = 16


@dataclass
class Finished:
    """A file whose download is over: its manifest entry, the claim it was fetched under,
    and, for a file just fetched, the staged object still to put in place."""

    job: dict[str, Any]
    claim: Claim | None
    entry: Entry
    staged: Staged | None = None


@dataclass
class Pipeline:
    storage: Storage
    books: Bookkeeping
    fetcher: FileFetcher
    send_download: SendDownload
    #: Where settled cases are listed for the archive browser (None: not kept).
    catalog: Catalog | None = None

    # -- ingest -----------------------------------------------------------------------------

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
            self.quarantine(delivery, exc.reason, exc.errors)
            return "quarantined"
        # Folders that differ only by case are one folder on a case-insensitive disk: claim
        # under a case-folded lock, so two such cfRefs cannot both take it (see _claim).
        with self.books.lock("claim", archive.case_dir(check.cf_ref).lower(), wait_seconds=30):
            case = self._claim(check.cf_ref)
            with self.books.lock("case", case, wait_seconds=30):
                return self._plan(case, check, body, delivery["deliveryId"])

    def _claim(self, cf_ref: str) -> str:
        """The case's folder: ``cases/<safe name>``, unless that folder already holds another
        cfRef (on a case-insensitive disk, ``cases/cf-1`` *is* ``cases/CF-1``); then the
        encoded name, which differs for every cfRef whatever the disk."""
        case = archive.case_dir(cf_ref)
        owner = self._owner(case)
        return case if owner is None or owner == cf_ref else archive.case_dir(cf_ref, encode=True)

    def _owner(self, case: str) -> str | None:
        manifest = self._read_manifest(case)
        if manifest is not None:
            return str(manifest.get("cfRef"))
        current = self._read(case, archive.CASE_JSON)
        return str(json.loads(current).get("cfRef")) if current is not None else None

    def _plan(self, case: str, check: CaseCheck, body: bytes, delivery_id: str) -> str:
        """Make ``body`` the case's payload, unless it is the one the manifest describes
        already (an identical re-delivery, or this delivery retried) or an older delivery than
        the one it describes (it goes straight to history).

        The manifest is written last and is what counts: it records the deliveryId and the
        sha256 of the payload it describes. A ``case.json`` that differs from that is the
        write of an interrupted delivery, which is still in the inbox and is retried: it is
        never taken for the payload the manifest describes.
        """
        previous = self._read_manifest(case)
        digest = _sha256(body)
        if previous is not None:
            current = None
            described = previous.get("payloadSha256")
            if described is None:  # a manifest from before it was recorded: case.json's
                current = self._read(case, archive.CASE_JSON)
                described = _sha256(current) if current is not None else None
            if digest == described:
                return self._same_payload(case, check, previous, delivery_id)
            if delivery_id != previous["deliveryId"] and accepted_before(
                    delivery_id, previous.get("latestDeliveryId") or previous["deliveryId"]):
                self._keep_history(case, delivery_id, body)
                log.info("delivery %s of %s is older than the archived one: kept in history",
                         delivery_id, check.cf_ref)
                return "superseded"
            if current is None:
                current = self._read(case, archive.CASE_JSON)
            if current is not None and _sha256(current) == described:
                self._keep_history(case, str(previous["deliveryId"]), current)
        self.storage.write_bytes(archive.case_key(case, archive.CASE_JSON), body)
        files, warnings = plan(check)
        manifest = new_manifest(check, delivery_id, reuse(files, previous), warnings)
        manifest["payloadSha256"] = digest
        if previous is not None:
            manifest["replaced"] = _orphans(previous, manifest)
        self._write_manifest(case, manifest)
        self._dispatch(case, manifest)
        return "planned"

    def _same_payload(self, case: str, check: CaseCheck, manifest: Manifest,
                      delivery_id: str) -> str:
        latest = manifest.get("latestDeliveryId") or manifest["deliveryId"]
        if delivery_id != latest and accepted_before(latest, delivery_id):
            # Accepted after the delivery the manifest names: an older changed payload
            # processed later must still go to history, not replace this one.
            manifest = {**manifest, "latestDeliveryId": delivery_id}
            self._write_manifest(case, manifest)
        if manifest["status"] != CaseStatus.PENDING.value:
            log.info("identical re-delivery of %s: nothing to do", check.cf_ref)
            return "duplicate"
        # Same payload, work under way (or lost): make sure every pending file is queued.
        self._dispatch(case, manifest, skip_held=True)
        return "resumed"

    def _keep_history(self, case: str, delivery_id: str, payload: bytes) -> None:
        """``history/<deliveryId>.json``, unless it is there already: never overwritten."""
        key = archive.case_key(case, archive.history_path(delivery_id))
        if not self.storage.exists(key):
            self.storage.write_bytes(key, payload)

    def _dispatch(self, case: str, manifest: Manifest, skip_held: bool = False) -> int:
        """Queue the files of ``manifest`` still to fetch (settle it if there are none);
        return how many were queued.
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
            self._settle_locked(case, gen)
            return 0
        files = [_job(index, manifest["files"][index]) for index in indices]
        if skip_held:
            held = self.books.held(case, [f["path"] for f in files])
            files = [f for f, busy in zip(files, held, strict=True) if not busy]
        for batch in batches(files, BATCH_FILES):
            self.send_download({"case": case, "gen": gen, "cfRef": manifest["cfRef"],
                                "files": batch})
        return len(files)

    # -- download ---------------------------------------------------------------------------

    def claim_batch(self, jobs: list[dict[str, Any]]) -> list[Claim]:
        """Claim the files of one download message (one case, one generation) at once."""
        if not jobs:
            return []
        return self.books.claim_many(jobs[0]["case"], jobs[0]["gen"],
                                     [(int(job["index"]), job["path"]) for job in jobs])

    def fetch_claimed(self, job: dict[str, Any], claim: Claim) -> Finished:
        """A file we hold the lock of: adopted from a dead worker, or fetched and staged
        (verified, written, not yet under its name) for :meth:`commit` to put in place."""
        adopted = self._adopt(job["case"], job, claim.intent)
        if adopted is not None:
            return Finished(job, claim, adopted)
        return self._fetch(job["case"], job, claim)

    def commit(self, case: str, gen: str, done: Sequence[Finished]) -> int | None:
        """Put finished files of one case in place and record them, in as few steps as
        they allow: one round trip notes the intents of the staged files, each is renamed
        into place, each folder is synced once, then one round trip records every entry
        and releases every lock. The case is settled if they were its last files.
        Returns how many files remain (None: ``gen`` is stale)."""
        try:
            self._put_in_place(case, [f for f in done if f.staged is not None])
            self.storage.sync_folders(
                archive.case_key(case, f.entry["path"]) for f in done
                if f.entry["status"] == FileStatus.STORED.value)
            remaining = self.books.record_many(
                case, gen, [(int(f.job["index"]), f.entry, f.claim.lock if f.claim else None)
                            for f in done])
        finally:
            for f in done:
                if f.claim is not None and f.claim.lock is not None:
                    release(f.claim.lock)
        if remaining == 0:
            self.settle(case, gen)
        return remaining

    def _put_in_place(self, case: str, staged: list[Finished]) -> None:
        if not staged:
            return
        placed = 0
        try:
            # Intents first: a worker dying after a rename leaves the next one a file to
            # adopt instead of one to fetch again.
            self.books.intend_many(case, {int(f.job["index"]): f.entry for f in staged})
            for finished in staged:
                assert finished.staged is not None
                job = finished.job
                with logs.bound(deliveryId=job.get("gen"), cfRef=job.get("cfRef"),
                                path=job.get("path")):
                    log.info("storing %s sha256=%s bytes=%d", finished.staged.key,
                             finished.entry["sha256"], finished.entry["bytes"])
                    finished.staged.commit(sync_folder=False)
                placed += 1
        finally:
            for finished in staged[placed:]:
                assert finished.staged is not None
                finished.staged.discard()

    def settle_if_done(self, case: str, gen: str) -> None:
        if not self.books.remaining(case):
            self.settle(case, gen)

    def _fetch(self, case: str, job: dict[str, Any], claim: Claim | None) -> Finished:
        kind = FileKind(job["kind"])
        path = job["path"]

        def key_for(file_type: FileType) -> str:
            relative = path if kind is FileKind.CASE_PDF else f"{path}.{file_type.extension}"
            return archive.case_key(case, relative)

        try:
            # The file's lock is the download's heartbeat: its key names what it writes.
            result, staged = self.fetcher.fetch_staged(job["sourceUrl"], kind, self.storage,
                                                       key_for, job.get("stepAction"),
                                                       owner=archive.case_key(case, path))
        except DownloadError as exc:
            attempts = getattr(exc, "attempts", 1)
            log.warning("download failed for %s %s after %d attempt(s): %s",
                        job["cfRef"], path, attempts, exc.message)
            return Finished(job, claim, {"path": path, "kind": kind.value,
                                         "status": FileStatus.FAILED.value,
                                         "error": exc.message, "attempts": attempts})
        return Finished(job, claim, _stored_entry(case, path, kind, result), staged)

    def _adopt(self, case: str, job: dict[str, Any], intent: Entry | None) -> Entry | None:
        """The file a dead worker verified and renamed into place (``intent``, as it noted
        it), if it is there, whole."""
        if intent is None:
            return None
        key = archive.case_key(case, intent["path"])
        try:
            sha256, _size = self.storage.digest(key)
        except NotFound:
            log.info("not adopting %s: its worker died before putting it in place", key)
            return None
        if sha256 != intent["sha256"]:
            log.warning("not adopting %s: its bytes differ from what was verified", key)
            return None
        log.info("adopting %s/%s, stored before its worker died", job["cfRef"], intent["path"])
        return intent

    # -- settle -----------------------------------------------------------------------------

    def settle(self, case: str, gen: str) -> None:
        """Write the final manifest once every file of generation ``gen`` is done."""
        with self.books.lock("case", case, wait_seconds=30):
            self._settle_locked(case, gen)

    def _settle_locked(self, case: str, gen: str) -> None:
        manifest = self._read_manifest(case)
        if manifest is None or manifest.get("deliveryId") != gen:
            return
        if manifest["status"] != CaseStatus.PENDING.value:
            self.books.finish(case)
            return
        results = self.books.results(case)
        merged = {i: {**manifest["files"][i], **entry} for i, entry in results.items()}
        final = settle(manifest, merged)
        if final["status"] == CaseStatus.PENDING.value:
            return
        replaced = final.pop("replaced", [])
        kept = {e["path"] for e in final["files"]}
        for path in replaced:
            if path not in kept:
                self.storage.delete(archive.case_key(case, path))
        # The page and the catalog row before the manifest: whoever sees the case settled
        # finds them too, and if writing them fails, the case is still pending and settling
        # it again writes all three.
        payload = self._read_payload(case)
        self.storage.write_bytes(archive.case_key(case, archive.INDEX_HTML),
                                 render_case(final, payload).encode("utf-8"))
        self._catalogue(case, final, payload)
        self._write_manifest(case, final)
        self.books.finish(case)
        log.info("case %s %s", final["cfRef"], final["status"])

    def _read_payload(self, case: str) -> Any:
        raw = self._read(case, archive.CASE_JSON)
        try:
            return parse_json(raw) if raw is not None else None
        except ValueError:
            return None

    def _catalogue(self, case: str, manifest: Manifest, payload: Any) -> None:
        """Update the case's row in the catalog. The catalog is derived from the manifests
        (``casefetch archive reindex`` rebuilds it): failing to update it loses nothing."""
        if self.catalog is None:
            return
        try:
            self.catalog.record(row_for(case, manifest, payload))
        except (sqlite3.Error, OSError) as exc:
            log.warning("catalog not updated for %s (%s): `casefetch archive reindex` "
                        "rebuilds it", manifest.get("cfRef"), exc)

    # -- quarantine -------------------------------------------------------------------------

    def quarantine(self, delivery: Delivery, reason: str, errors: Any) -> None:
        record: dict[str, Any] = {
            "deliveryId": delivery["deliveryId"],
            "receivedAt": delivery.get("receivedAt"),
            "reason": reason,
            "errors": errors,
        }
        if delivery.get("body") is not None:
            record["body"] = delivery["body"]
        else:
            record["bodyBase64"] = delivery.get("bodyBase64")
        record["headers"] = delivery.get("headers", {})
        self.storage.write_bytes(archive.quarantine_key(delivery["deliveryId"]),
                                 codec.pretty(record))
        log.warning("delivery %s quarantined: %s", delivery["deliveryId"], reason)

    # -- helpers ----------------------------------------------------------------------------

    def _read(self, case: str, relative: str) -> bytes | None:
        try:
            return self.storage.read_bytes(archive.case_key(case, relative))
        except NotFound:
            return None

    def _read_manifest(self, case: str) -> Manifest | None:
        raw = self._read(case, archive.MANIFEST)
        return parse_json(raw) if raw is not None else None

    def _write_manifest(self, case: str, manifest: Manifest) -> None:
        self.storage.write_bytes(archive.case_key(case, archive.MANIFEST), codec.pretty(manifest))


def batches(files: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """``files`` cut into as few batches of at most ``size`` as possible, of even lengths
    (11 files make 6 + 5, not 8 + 3, so the batches of one case end together)."""
    if not files:
        return []
    count = -(-len(files) // size)
    return [files[i::count] for i in range(count)]


def file_jobs(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The one-file jobs of a download message."""
    common = {k: v for k, v in message.items() if k != "files"}
    return [{**common, **entry} for entry in message["files"]]


def failed_entry(job: dict[str, Any], error: str) -> Entry:
    return {"path": job["path"], "kind": job["kind"], "status": FileStatus.FAILED.value,
            "error": error[:500], "attempts": 1}


def release(lock: HeldLock) -> None:
    """Let go of a file lock; if Redis cannot be told, the lock expires by itself."""
    with contextlib.suppress(RedisError, OSError):
        lock.__exit__(None, None, None)


def _job(index: int, entry: Entry) -> dict[str, Any]:
    job = {"index": index, "path": entry["path"], "kind": entry["kind"],
           "sourceUrl": entry["sourceUrl"]}
    if entry.get("stepAction") == "VIDEO":
        job["stepAction"] = "VIDEO"  # the one step whose file may be a video
    return job


def _stored_entry(case: str, path: str, kind: FileKind, result: FetchResult) -> Entry:
    entry = {"path": result.key[len(case) + 1:], "kind": kind.value,
             "status": FileStatus.STORED.value, "sha256": result.sha256, "bytes": result.size,
             "contentType": result.file_type.content_type, "error": None,
             "attempts": result.attempts}
    if result.warning:
        entry["warning"] = result.warning
    return entry


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
    earlier = [*previous.get("replaced", []),
               *(e["path"] for e in previous.get("files", [])
                 if e.get("status") == FileStatus.STORED.value)]
    return [path for path in dict.fromkeys(earlier) if path not in now]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = ["Busy", "Pipeline"]


def resume(pipeline: Pipeline, case: str, wait_seconds: float = 30) -> str:
    """Re-queue what a stuck case still needs (its messages were lost or its worker died),
    except the files a live worker holds: ``resumed``, ``in hand`` (every file left is held)
    or ``finished``."""
    with pipeline.books.lock("case", case, wait_seconds=wait_seconds):
        manifest = pipeline._read_manifest(case)
        if manifest is None or manifest["status"] != CaseStatus.PENDING.value:
            pipeline.books.finish(case)
            return "finished"
        queued = pipeline._dispatch(case, manifest, skip_held=True)
        return "resumed" if queued else "in hand"
