"""The files of a case: claimed, fetched (or adopted from a dead worker), staged, then put
in place and recorded together. :mod:`worker.batch` runs these steps for one download
message, its files side by side.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from casefetch import logs
from worker import archive
from worker.bookkeeping import Bookkeeping, Claim
from worker.download import FetchResult, FileFetcher
from worker.errors import DownloadError, NotFound
from worker.locks import HeldLock
from worker.manifest import Entry, FileStatus
from worker.messages import FileJob
from worker.settle import Settler
from worker.sniff import FileKind, FileType
from worker.storage import Staged, Storage

log = logging.getLogger("casefetch.worker")


@dataclass
class Finished:
    """A file whose download is over: its manifest entry, the claim it was fetched under,
    and, for a file just fetched, the staged object still to put in place."""

    job: FileJob
    claim: Claim | None
    entry: Entry
    staged: Staged | None = None


@dataclass
class Files:
    storage: Storage
    books: Bookkeeping
    fetcher: FileFetcher
    settler: Settler

    def claim_batch(self, jobs: list[FileJob]) -> list[Claim]:
        """Claim the files of one download message (one case, one generation) at once."""
        if not jobs:
            return []
        return self.books.claim_many(
            jobs[0]["case"], jobs[0]["gen"], [(int(job["index"]), job["path"]) for job in jobs]
        )

    def fetch_claimed(self, job: FileJob, claim: Claim) -> Finished:
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
                archive.case_key(case, f.entry["path"])
                for f in done
                if f.entry["status"] == FileStatus.STORED
            )
            remaining = self.books.record_many(
                case,
                gen,
                [(int(f.job["index"]), f.entry, f.claim.lock if f.claim else None) for f in done],
            )
        finally:
            for f in done:
                if f.claim is not None and f.claim.lock is not None:
                    release(f.claim.lock)
        if remaining == 0:
            self.settler.settle(case, gen)
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
                with logs.bound(
                    deliveryId=job.get("gen"), cfRef=job.get("cfRef"), path=job.get("path")
                ):
                    log.info(
                        "storing %s sha256=%s bytes=%d",
                        finished.staged.key,
                        finished.entry["sha256"],
                        finished.entry["bytes"],
                    )
                    finished.staged.commit(sync_folder=False)
                placed += 1
        finally:
            for finished in staged[placed:]:
                assert finished.staged is not None
                finished.staged.discard()

    def _fetch(self, case: str, job: FileJob, claim: Claim | None) -> Finished:
        kind = FileKind(job["kind"])
        path = job["path"]

        def key_for(file_type: FileType) -> str:
            relative = path if kind is FileKind.CASE_PDF else f"{path}.{file_type.extension}"
            return archive.case_key(case, relative)

        try:
            # The file's lock is the download's heartbeat: its key names what it writes.
            result, staged = self.fetcher.fetch_staged(
                job["sourceUrl"],
                kind,
                self.storage,
                key_for,
                job.get("stepAction"),
                owner=archive.case_key(case, path),
            )
        except DownloadError as exc:
            attempts = getattr(exc, "attempts", 1)
            log.warning(
                "download failed for %s %s after %d attempt(s): %s",
                job["cfRef"],
                path,
                attempts,
                exc.message,
            )
            return Finished(
                job,
                claim,
                {
                    "path": path,
                    "kind": kind.value,
                    "status": FileStatus.FAILED.value,
                    "error": exc.message,
                    "attempts": attempts,
                },
            )
        return Finished(job, claim, _stored_entry(case, path, kind, result), staged)

    def _adopt(self, case: str, job: FileJob, intent: Entry | None) -> Entry | None:
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


def failed_entry(job: FileJob, error: str) -> Entry:
    return {
        "path": job["path"],
        "kind": job["kind"],
        "status": FileStatus.FAILED.value,
        "error": error[:500],
        "attempts": 1,
    }


def release(lock: HeldLock) -> None:
    """Let go of a file lock; if Redis cannot be told, the lock expires by itself."""
    with contextlib.suppress(RedisError, OSError):
        lock.__exit__(None, None, None)


def _stored_entry(case: str, path: str, kind: FileKind, result: FetchResult) -> Entry:
    entry: Entry = {
        "path": result.key[len(case) + 1 :],
        "kind": kind.value,
        "status": FileStatus.STORED.value,
        "sha256": result.sha256,
        "bytes": result.size,
        "contentType": result.file_type.content_type,
        "error": None,
        "attempts": result.attempts,
    }
    if result.warning:
        entry["warning"] = result.warning
    return entry
