"""Re-queueing the failed files of an ``incomplete`` case (``casefetch archive retry``).

Under the case lock, the failed entries that were actually tried (``attempts`` > 0; a file
whose URL was invalid in the payload cannot succeed) go back to ``pending``, the manifest
becomes ``pending``, and the pipeline dispatches them exactly as it dispatches a new case:
the last download settles the manifest again.
"""

from __future__ import annotations

from worker import archive, casefiles
from worker.inspection import CaseNotFound, InspectionError
from worker.manifest import CaseStatus, Entry, FileStatus, now_iso
from worker.pipeline import Pipeline


class CaseBusy(InspectionError):
    """The case is still being fetched: nothing to retry yet."""


def retryable(entry: Entry) -> bool:
    return entry.get("status") == FileStatus.FAILED.value and int(entry.get("attempts") or 0) > 0


def retry_case(pipeline: Pipeline, cf_ref: str) -> list[str]:
    """Re-queue the case's failed downloads; the paths re-queued (empty: nothing to retry)."""
    case = next(
        (
            folder
            for folder in archive.case_dirs(cf_ref)
            if (casefiles.read_manifest(pipeline.storage, folder) or {}).get("cfRef") == cf_ref
        ),
        None,
    )
    if case is None:
        raise CaseNotFound(cf_ref)
    with pipeline.books.lock("case", case, wait_seconds=30) as lock:
        manifest = casefiles.read_manifest(pipeline.storage, case)
        if manifest is None:
            raise CaseNotFound(cf_ref)
        if manifest["status"] == CaseStatus.PENDING.value:
            raise CaseBusy(f"case {cf_ref!r} is still being fetched")
        indices = [i for i, entry in enumerate(manifest["files"]) if retryable(entry)]
        if not indices:
            return []
        files: list[Entry] = list(manifest["files"])
        for index in indices:
            files[index] = _pending(files[index])
        manifest = {
            **manifest,
            "files": files,
            "status": CaseStatus.PENDING.value,
            "updatedAt": now_iso(),
        }
        casefiles.write_manifest(pipeline.storage, case, manifest, lock)
        pipeline.intake.dispatch(case, manifest, lock)
        return [str(files[i]["path"]) for i in indices]


def _pending(entry: Entry) -> Entry:
    pending: Entry = {
        **entry,
        "status": FileStatus.PENDING.value,
        "sha256": None,
        "bytes": None,
        "contentType": None,
        "error": None,
    }
    pending.pop("warning", None)
    return pending
