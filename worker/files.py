"""The files of a case: claimed, fetched (or adopted from a dead worker), staged, then put
in place and recorded together. :mod:`worker.batch` runs these steps for one download
message, its files side by side.

Nothing is put in place under a lock that is no longer ours: a worker cut off from Redis
while it fetched (a network partition) may find, when it comes back, that its file went to
another worker. It confirms its locks first (:meth:`worker.locks.Locks.confirm`) and leaves
such files to their new holder, and recording refuses them too.
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

#: The outcome of a file whose lock passed on before it was recorded (another worker has it).
LOST = "lost"


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

    def commit(self, case: str, gen: str, done: Sequence[Finished]) -> list[str]:
        """Put finished files of one case in place and record them, in as few steps as
        they allow: one round trip confirms their locks are still ours, one notes the
        intents of the staged files, each is renamed into place, each folder is synced
        once, then one round trip records every entry and releases every lock. The case is
        settled if they were its last files. Returns each file's outcome: its status, or
        ``lost`` (its lock passed on: the file is left to its new holder)."""
        try:
            kept = self._fenced(done)
            self._put_in_place(case, [f for f in kept if f.staged is not None])
            self.storage.sync_folders(
                archive.case_key(case, f.entry["path"])
                for f in kept
                if f.entry["status"] == FileStatus.STORED
            )
            recorded = (
                self.books.record_many(
                    case,
                    gen,
                    [(int(f.job["index"]), f.entry, _lock(f)) for f in kept],
                )
                if kept
                else None
            )
        finally:
            for f in done:
                if (lock := _lock(f)) is not None:
                    release(lock)
        if recorded is None:
            return [LOST] * len(done)
        lost = {int(f.job["index"]) for f in done} - {int(f.job["index"]) for f in kept}
        for f in kept:
            if int(f.job["index"]) in recorded.refused:
                lost.add(int(f.job["index"]))
                # Its lock expired between the check and the rename (the worker stalled for
                # longer than the lock's TTL): its new holder stores the file again.
                log.warning(
                    "%s/%s was put in place after its lock passed on: not recorded, left to "
                    "its new holder",
                    f.job["cfRef"],
                    f.entry["path"],
                )
        if recorded.remaining == 0:
            self.settler.settle(case, gen)
        return [LOST if int(f.job["index"]) in lost else str(f.entry["status"]) for f in done]

    def _fenced(self, done: Sequence[Finished]) -> list[Finished]:
        """The files still ours to put in place and record, in one round trip; the others
        (their lock expired while this worker was cut off, another may hold it) are
        discarded, each with one line in the log."""
        locks = [lock for f in done if (lock := _lock(f)) is not None]
        try:
            held = dict(zip(map(id, locks), self.books.locks.confirm(locks), strict=True))
        except BaseException:
            for f in done:
                if f.staged is not None:
                    f.staged.discard()
            raise
        kept = []
        for f in done:
            lock = _lock(f)
            if lock is None or held[id(lock)]:
                kept.append(f)
                continue
            if f.staged is not None:
                f.staged.discard()
            log.warning(
                "not storing %s/%s: its lock (fence %d) passed on while this worker was cut "
                "off from Redis; left to its new holder",
                f.job["cfRef"],
                f.job["path"],
                lock.fence,
            )
        return kept

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
                        "storing %s sha256=%s bytes=%d fence=%s",
                        finished.staged.key,
                        finished.entry["sha256"],
                        finished.entry["bytes"],
                        lock.fence if (lock := _lock(finished)) is not None else "-",
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


def _lock(finished: Finished) -> HeldLock | None:
    return finished.claim.lock if finished.claim is not None else None


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
