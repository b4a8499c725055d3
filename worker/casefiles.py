"""A case's files in the archive, read and written by their path in the case folder."""

from __future__ import annotations

from casefetch import codec
from worker import archive
from worker.errors import NotFound
from worker.locks import HeldLock
from worker.manifest import Manifest, parse_json
from worker.storage import Storage


def read(storage: Storage, case: str, relative: str) -> bytes | None:
    try:
        return storage.read_bytes(archive.case_key(case, relative))
    except NotFound:
        return None


def read_manifest(storage: Storage, case: str) -> Manifest | None:
    raw = read(storage, case, archive.MANIFEST)
    return parse_json(raw) if raw is not None else None


def write_manifest(storage: Storage, case: str, manifest: Manifest, lock: HeldLock) -> None:
    """Write the manifest under the case's ``lock``, checked first: a worker whose lock
    passed on (LockLost) leaves the manifest to the new holder."""
    lock.check()
    storage.write_bytes(archive.case_key(case, archive.MANIFEST), codec.pretty(manifest))
