"""Reading the archive as an operator does: list cases, show one, verify files against manifests.

Plain functions over a :class:`~worker.storage.Storage`, so they work alike on a local and an
S3 archive. Verification is split in two (what to check, then one file at a time) so the
command line can draw progress between files.

InspectionError (worker.errors.WorkerError)
 ├── CaseNotFound       no manifest for that cfRef
 └── RecordNotFound     no quarantine record for that deliveryId
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from worker import archive
from worker.errors import NotFound, WorkerError
from worker.manifest import FileStatus, Manifest, case_items, parse_json
from worker.storage import Storage

#: What a case folder may be called (so a folder name given as CFREF finds its case).
_FOLDER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,200}")


class InspectionError(WorkerError):
    pass


class CaseNotFound(InspectionError):
    def __init__(self, cf_ref: str) -> None:
        super().__init__(f"no case {cf_ref!r} in the archive")
        self.cf_ref = cf_ref


class RecordNotFound(InspectionError):
    def __init__(self, delivery_id: str) -> None:
        super().__init__(f"no quarantined delivery {delivery_id!r}")
        self.delivery_id = delivery_id


@dataclass(frozen=True)
class CaseSummary:
    cfRef: str
    reportId: str | None
    status: str
    filesStored: int
    filesTotal: int
    filesFailed: int
    warnings: int
    bytes: int
    updatedAt: str | None
    deliveryId: str | None
    folder: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def case_folders(storage: Storage) -> list[str]:
    """Every case folder holding a manifest (``cases/<name>``)."""
    folders = []
    for key in storage.list(f"{archive.CASES}/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == archive.MANIFEST:
            folders.append(f"{parts[0]}/{parts[1]}")
    return folders


def read_manifest(storage: Storage, folder: str) -> Manifest:
    data = storage.read_bytes(archive.case_key(folder, archive.MANIFEST))
    manifest = json.loads(data)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise ValueError("not a manifest")
    return manifest


def summarise(folder: str, manifest: Manifest) -> CaseSummary:
    files = manifest["files"]
    stored = [f for f in files if f.get("status") == FileStatus.STORED.value]
    return CaseSummary(
        cfRef=str(manifest.get("cfRef", folder.rsplit("/", 1)[-1])),
        reportId=manifest.get("reportId"),
        status=str(manifest.get("status", "unknown")),
        filesStored=len(stored),
        filesTotal=len(files),
        filesFailed=sum(1 for f in files if f.get("status") == FileStatus.FAILED.value),
        warnings=len(manifest.get("warnings") or []),
        bytes=sum(int(f.get("bytes") or 0) for f in stored),
        updatedAt=manifest.get("updatedAt"),
        deliveryId=manifest.get("deliveryId"),
        folder=folder,
    )


def list_cases(
    storage: Storage,
    status: str | None = None,
    since: str | None = None,
    with_warnings: bool = False,
) -> list[CaseSummary]:
    """One summary per case, newest update first; ``since`` is an ISO timestamp prefix;
    ``with_warnings``: only cases whose manifest lists warnings."""
    found = []
    for folder in case_folders(storage):
        try:
            summary = summarise(folder, read_manifest(storage, folder))
        except (NotFound, ValueError):
            continue  # removed meanwhile, or unreadable: `verify` reports those
        if status and summary.status != status:
            continue
        if since and (summary.updatedAt or "") < since:
            continue
        if with_warnings and not summary.warnings:
            continue
        found.append(summary)
    found.sort(key=lambda s: (s.updatedAt or "", s.cfRef), reverse=True)
    return found


def find_case(storage: Storage, cf_ref: str) -> tuple[str, Manifest]:
    """The folder and manifest of a case, by its cfRef (or by its folder name).

    On a case-insensitive disk ``cases/cf-1`` may open CF-1's folder: a folder counts only
    when its manifest names this cfRef (or when it was asked for by folder name).
    """
    candidates = [(folder, True) for folder in archive.case_dirs(cf_ref)]
    if _FOLDER_NAME.fullmatch(cf_ref):
        candidates.append((f"{archive.CASES}/{cf_ref}", False))
    for folder, must_match in candidates:
        try:
            manifest = read_manifest(storage, folder)
        except NotFound:
            continue
        except ValueError as exc:
            raise InspectionError(f"the manifest of {cf_ref!r} is unreadable: {exc}") from exc
        if not must_match or manifest.get("cfRef") == cf_ref:
            return folder, manifest
    raise CaseNotFound(cf_ref)


def read_payload(storage: Storage, folder: str) -> Any:
    """The case's ``case.json``, decoded; None when it is missing or not JSON."""
    try:
        return parse_json(storage.read_bytes(archive.case_key(folder, archive.CASE_JSON)))
    except (NotFound, ValueError):
        return None


def show_case(storage: Storage, cf_ref: str) -> dict[str, Any]:
    """The manifest, the payload's items joined with their files, and the earlier deliveries."""
    folder, manifest = find_case(storage, cf_ref)
    payload = read_payload(storage, folder)
    items = [
        {
            "position": item.position,
            "cfRef": item.fields.get("cfRef"),
            "stepAction": item.fields.get("stepAction"),
            "file": item.file,
        }
        for item in case_items(manifest, payload)
    ]
    history = sorted(
        key.rsplit("/", 1)[-1].removesuffix(".json")
        for key in storage.list(f"{folder}/{archive.HISTORY}/")
    )
    return {"folder": folder, "manifest": manifest, "items": items, "history": history}


# -- verify -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    cfRef: str
    folder: str
    entry: dict[str, Any]

    @property
    def key(self) -> str:
        return archive.case_key(self.folder, str(self.entry["path"]))


@dataclass(frozen=True)
class Problem:
    cfRef: str
    path: str
    problem: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def verify_targets(
    storage: Storage, cf_ref: str | None = None
) -> tuple[list[Target], list[Problem]]:
    """Every stored file to re-hash (of one case, or of all), and manifests that cannot be read."""
    if cf_ref is not None:
        folder, manifest = find_case(storage, cf_ref)
        cases = [(folder, manifest)]
        problems: list[Problem] = []
    else:
        cases, problems = [], []
        for folder in sorted(case_folders(storage)):
            try:
                cases.append((folder, read_manifest(storage, folder)))
            except NotFound:
                continue
            except ValueError as exc:
                problems.append(
                    Problem(
                        folder.rsplit("/", 1)[-1], archive.MANIFEST, f"unreadable manifest: {exc}"
                    )
                )
    targets = [
        Target(str(manifest.get("cfRef", folder)), folder, entry)
        for folder, manifest in cases
        for entry in manifest["files"]
        if entry.get("status") == FileStatus.STORED.value
    ]
    return targets, problems


def verify_file(storage: Storage, target: Target) -> Problem | None:
    """Re-hash one file; a Problem when it is missing or differs from its manifest entry."""
    try:
        sha256, size = storage.digest(target.key)
    except NotFound:
        return Problem(target.cfRef, target.entry["path"], "missing")
    expected_size = target.entry.get("bytes")
    if sha256 != target.entry.get("sha256"):
        return Problem(
            target.cfRef,
            target.entry["path"],
            f"sha256 mismatch (size {size}, manifest says {expected_size})",
        )
    if expected_size is not None and size != expected_size:
        return Problem(
            target.cfRef, target.entry["path"], f"size {size}, manifest says {expected_size}"
        )
    return None
