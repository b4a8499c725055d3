"""Building the manifest: pure functions over dicts.

A manifest lists every file a case references, in a fixed order (the PDF, then the items'
images by position). While work is under way entries are ``pending``; each then becomes
``stored`` (with sha256, size and type) or ``failed`` (with the error).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypedDict, cast

from casefetch import codec
from worker import archive
from worker.schemas import CaseCheck, ItemCheck
from worker.sniff import FileKind


class Entry(TypedDict, total=False):
    """One file of a manifest (``files``), as the contract shows it."""

    path: str
    kind: str
    #: Position of the item the file belongs to (from 1); item files only.
    item: int
    itemCfRef: Any
    stepAction: Any
    sourceUrl: str
    status: str
    sha256: str | None
    bytes: int | None
    contentType: str | None
    error: str | None
    attempts: int
    warning: str


Manifest = dict[str, Any]


class FileStatus(str, Enum):
    PENDING = "pending"
    STORED = "stored"
    FAILED = "failed"


class CaseStatus(str, Enum):
    PENDING = "pending"
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"


parse_json = codec.loads  # one JSON module for both sides: casefetch/codec.py


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _entry(path: str, kind: FileKind, source_url: str, item: ItemCheck | None = None) -> Entry:
    entry: Entry = {"path": path, "kind": kind.value}
    if item is not None:
        entry["item"] = item.position
        entry["itemCfRef"] = item.cf_ref
        entry["stepAction"] = item.step_action
    entry.update(
        {
            "sourceUrl": source_url,
            "status": FileStatus.PENDING.value,
            "sha256": None,
            "bytes": None,
            "contentType": None,
            "error": None,
            "attempts": 0,
        }
    )
    return entry


def stem(entry: Entry) -> str:
    """The entry's path without the extension its content gave it."""
    if entry["kind"] == FileKind.CASE_PDF.value:
        return str(entry["path"])
    path = str(entry["path"])
    if entry["status"] == FileStatus.STORED.value:
        return path.rsplit(".", 1)[0]
    return path


def plan(check: CaseCheck) -> tuple[list[Entry], list[dict[str, Any]]]:
    """The files a case references and the problems found in its items."""
    files = [_entry(archive.CASE_PDF, FileKind.CASE_PDF, check.case_url)]
    warnings: list[dict[str, Any]] = []
    for item in check.items:
        if item.errors:
            warnings.append(
                {"item": item.position, "itemCfRef": item.cf_ref, "errors": item.errors}
            )
        url = item.image_url or item.bad_image_url
        if not url:
            continue
        entry = _entry(
            archive.item_stem(item.position, item.cf_ref or "item"), FileKind.ITEM_IMAGE, url, item
        )
        if item.image_url is None:
            entry["status"] = FileStatus.FAILED.value
            entry["error"] = f"invalid imageUrl: {'; '.join(item.errors['imageUrl'])}"
        files.append(entry)
    return files, warnings


def reuse(files: list[Entry], previous: Manifest | None) -> list[Entry]:
    """Carry over what an earlier delivery already stored from the same URL to the same place."""
    if not previous:
        return files
    stored = {
        (stem(e), e["sourceUrl"]): e
        for e in previous.get("files", [])
        if e.get("status") == FileStatus.STORED.value
    }
    merged = []
    for entry in files:
        earlier = stored.get((stem(entry), entry["sourceUrl"]))
        if entry["status"] == FileStatus.PENDING.value and earlier is not None:
            entry = cast(
                Entry,
                {
                    **entry,
                    **{
                        k: earlier[k]
                        for k in (
                            "path",
                            "status",
                            "sha256",
                            "bytes",
                            "contentType",
                            "attempts",
                            "warning",
                        )
                        if k in earlier
                    },
                    "error": None,
                },
            )
        merged.append(entry)
    return merged


def new_manifest(
    check: CaseCheck, delivery_id: str, files: list[Entry], warnings: list[dict[str, Any]]
) -> Manifest:
    return {
        "cfRef": check.cf_ref,
        "reportId": check.report_id,
        "status": CaseStatus.PENDING.value,
        "updatedAt": now_iso(),
        "deliveryId": delivery_id,
        "files": files,
        "warnings": warnings,
    }


def case_status(manifest: Manifest) -> CaseStatus:
    """Files only: warnings (about payload fields, or a file kept under another type) never
    make a case incomplete."""
    statuses = {entry["status"] for entry in manifest["files"]}
    if FileStatus.PENDING.value in statuses:
        return CaseStatus.PENDING
    if statuses - {FileStatus.STORED.value}:
        return CaseStatus.INCOMPLETE
    return CaseStatus.COMPLETE


def file_warnings(files: list[Entry]) -> list[dict[str, Any]]:
    """The manifest's warnings about stored files (each also on its entry)."""
    warnings = []
    for entry in files:
        if entry.get("status") == FileStatus.STORED.value and entry.get("warning"):
            item = item_position(entry)
            warnings.append(
                {
                    "item": item,
                    "itemCfRef": entry.get("itemCfRef"),
                    "path": entry["path"],
                    "errors": {"file": [entry["warning"]]},
                }
            )
    return warnings


def settle(manifest: Manifest, results: dict[int, Entry]) -> Manifest:
    """The manifest with the download results merged in and its status computed."""
    files = [results.get(index, entry) for index, entry in enumerate(manifest["files"])]
    # Warnings about files are rebuilt from the entries: a retried case is settled again.
    warnings = [w for w in manifest.get("warnings") or [] if "path" not in w]
    settled = {
        **manifest,
        "files": files,
        "updatedAt": now_iso(),
        "warnings": warnings + file_warnings(files),
    }
    settled["status"] = case_status(settled).value
    return settled


def item_position(entry: Entry) -> int | None:
    """The position (from 1) of the item an entry's file belongs to: its ``item`` field, or,
    for entries written before it, the whole number its file name starts with
    (``items/<NNN>-<cfRef>.<ext>``, however many digits)."""
    position = entry.get("item")
    if isinstance(position, int) and not isinstance(position, bool):
        return position
    number = str(entry.get("path", "")).rsplit("/", 1)[-1].split("-", 1)[0]
    return int(number) if number.isascii() and number.isdigit() else None


def item_files(manifest: Manifest) -> dict[int, Entry]:
    """Each item's file, by the item's position (from 1): the one mapping from items to
    files that the pages, ``archive show`` and ``archive list`` share.

    An entry names its position (``item``); entries written before it did are read by the
    digits their file name starts with, however many (``items/1000-IT-1000.jpg`` is item
    1000, not item 100).
    """
    found: dict[int, Entry] = {}
    for entry in manifest.get("files") or []:
        if isinstance(entry, dict) and entry.get("kind") == FileKind.ITEM_IMAGE.value:
            position = item_position(cast(Entry, entry))
            if position is not None:
                found[position] = cast(Entry, entry)
    return found


@dataclass(frozen=True)
class CaseItem:
    """One item of the payload, as sent (``raw``), with its file from the manifest."""

    position: int
    raw: Any
    file: Entry | None

    @property
    def fields(self) -> dict[str, Any]:
        """The item's fields; none when the item is not a JSON object."""
        return self.raw if isinstance(self.raw, dict) else {}


def case_items(manifest: Manifest, payload: Any) -> list[CaseItem]:
    """The payload's items in order, each joined with its file (:func:`item_files`)."""
    files = item_files(manifest)
    raw_items = payload.get("items") if isinstance(payload, dict) else None
    return [
        CaseItem(position, item, files.get(position))
        for position, item in enumerate(raw_items if isinstance(raw_items, list) else [], 1)
    ]


def pending_indices(manifest: Manifest) -> list[int]:
    return [i for i, e in enumerate(manifest["files"]) if e["status"] == FileStatus.PENDING.value]
