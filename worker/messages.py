"""The download message: what ingest queues for the files of a case, one message per batch.

    {"case": "cases/CF-1", "gen": "<deliveryId>", "cfRef": "CF-1",
     "files": [{"index": 0, "path": "case.pdf", "kind": "case_pdf", "sourceUrl": "https://..."},
               ...],
     "busyRetries": 2}                 (only once a retry found a file held elsewhere)

``gen`` is the delivery whose manifest listed the files: results of another are stale.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class FileRef(TypedDict):
    """One file of a download message: its index and entry in the manifest."""

    index: int
    path: str
    kind: str
    sourceUrl: str
    #: Only for a VIDEO item, the one step whose file may be a video.
    stepAction: NotRequired[str]


class DownloadMessage(TypedDict):
    case: str
    gen: str
    cfRef: str
    files: list[FileRef]
    busyRetries: NotRequired[int]


class FileJob(FileRef):
    """One file of a download message, with the message's case, generation and cfRef."""

    case: str
    gen: str
    cfRef: str


def file_jobs(message: DownloadMessage) -> list[FileJob]:
    """The one-file jobs of a download message."""
    jobs = []
    for ref in message["files"]:
        job: FileJob = {
            "case": message["case"],
            "gen": message["gen"],
            "cfRef": message["cfRef"],
            "index": ref["index"],
            "path": ref["path"],
            "kind": ref["kind"],
            "sourceUrl": ref["sourceUrl"],
        }
        if "stepAction" in ref:
            job["stepAction"] = ref["stepAction"]
        jobs.append(job)
    return jobs
