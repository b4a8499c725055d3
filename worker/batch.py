"""The download task's work: fetch the files of one download message, side by side, and
commit them group by group.

One round trip claims every file of the message. The files are then fetched on threads the
whole process shares (as many as it runs tasks), so a batch is as quick as its files were as
separate tasks. The files that finished are committed together, when the last one is done or
every COMMIT_EVERY_SECONDS: one round trip for their intents, one fsync per folder, one round
trip to record them and release their locks. A file is counted as stored only after its
folder was synced.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, wait

from casefetch import logs
from worker.bookkeeping import Busy, Claim, ClaimStatus
from worker.errors import INFRA_ERRORS
from worker.files import Files, Finished, failed_entry, release
from worker.messages import DownloadMessage, FileJob, file_jobs
from worker.runtime import Runtime

log = logging.getLogger("casefetch.worker")

#: How long a fetched file of a batch may wait (verified, staged) for the others, so that
#: they are put in place and recorded together. A file whose download is slower (a large
#: one, or one retried after a backoff) does not hold the others back longer than this.
COMMIT_EVERY_SECONDS = 0.5


def fetch_batch(
    runtime: Runtime, message: DownloadMessage
) -> tuple[list[str], BaseException | None]:
    """Fetch the files of a download message; their outcomes, and why to come back, if so."""
    files = runtime.pipeline.files
    jobs = file_jobs(message)
    if not jobs:
        return [], None
    case, gen = jobs[0]["case"], jobs[0]["gen"]
    try:
        claims = files.claim_batch(jobs)
    except INFRA_ERRORS as exc:
        log.warning("downloads of %s postponed: %s", case, exc)
        return [], exc
    batch = _Batch(files, case, gen)
    running: dict[Future[Finished], tuple[FileJob, Claim]] = {}
    for job, claim in zip(jobs, claims, strict=True):
        if claim.lock is not None:
            claim.lock.__enter__()  # renewed from now on; commit (or release) lets it go
            running[runtime.files.submit(_fetch_file, files, job, claim)] = (job, claim)
        elif claim.status is ClaimStatus.BUSY:
            batch.postpone(Busy(f"file:{case}:{job['path']}"))  # come back for it
        else:
            batch.outcomes.append(claim.status.value)
    waiting: set[Future[Finished]] = set(running)
    while waiting:
        finished, waiting = wait(waiting, timeout=COMMIT_EVERY_SECONDS)
        if finished:
            batch.commit([(*running[future], future) for future in finished])
    batch.settle_if_redelivered()
    return batch.outcomes, batch.postponed


class _Batch:
    """The outcomes of one download message, committed group by group."""

    def __init__(self, files: Files, case: str, gen: str) -> None:
        self.files = files
        self.case = case
        self.gen = gen
        self.outcomes: list[str] = []
        self.postponed: BaseException | None = None
        self.committed = False

    def postpone(self, exc: BaseException) -> None:
        self.postponed = self.postponed or exc

    def commit(self, finished: list[tuple[FileJob, Claim, Future[Finished]]]) -> None:
        group = []
        for job, claim, future in finished:
            try:
                group.append(future.result())
            except INFRA_ERRORS as exc:
                log.warning("download %s/%s postponed: %s", self.case, job.get("path"), exc)
                self.postponed = exc
                if claim.lock is not None:
                    release(claim.lock)
            except Exception as exc:
                # A bug must not leave the case pending for ever: record the file as failed.
                log.error(
                    "download %s/%s failed unexpectedly", self.case, job.get("path"), exc_info=exc
                )
                group.append(
                    Finished(
                        job,
                        claim,
                        failed_entry(job, f"internal error: {type(exc).__name__}: {exc}"),
                    )
                )
        if not group:
            return
        try:
            outcomes = self.files.commit(self.case, self.gen, group)
        except (Busy, *INFRA_ERRORS) as exc:
            log.warning("downloads of %s postponed: %s", self.case, exc)
            self.postponed = exc
            return
        self.committed = True
        self.outcomes += outcomes

    def settle_if_redelivered(self) -> None:
        """Every file was fetched already (a redelivered message): make sure the case is
        settled."""
        if (
            ClaimStatus.DONE.value not in self.outcomes
            or self.committed
            or self.postponed is not None
        ):
            return
        try:
            self.files.settler.settle_if_done(self.case, self.gen)
        except (Busy, *INFRA_ERRORS) as exc:
            self.postponed = exc


def _fetch_file(files: Files, job: FileJob, claim: Claim) -> Finished:
    with logs.bound(deliveryId=job.get("gen"), cfRef=job.get("cfRef"), path=job.get("path")):
        return files.fetch_claimed(job, claim)
