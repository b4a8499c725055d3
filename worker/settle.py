"""Settling a case: once every file of its current delivery is done, the final manifest is
written, with the case's page and its catalog row, and its bookkeeping is dropped."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from worker import archive, casefiles
from worker.bookkeeping import Bookkeeping
from worker.catalog import Catalog, row_for
from worker.errors import LockLost
from worker.locks import HeldLock
from worker.manifest import CaseStatus, Entry, Manifest, parse_json, settle
from worker.page import render_case
from worker.storage import Storage

log = logging.getLogger("casefetch.worker")


@dataclass
class Settler:
    storage: Storage
    books: Bookkeeping
    #: Where settled cases are listed for the archive browser (None: not kept).
    catalog: Catalog | None = None
    #: Told of every case this settler settles, with its final manifest, once (metrics and
    #: the "case settled" line); a later rewrite of a settled manifest is not a settling.
    on_settled: Callable[[Manifest], None] | None = None

    def settle(self, case: str, gen: str) -> None:
        """Write the final manifest once every file of generation ``gen`` is done."""
        try:
            with self.books.lock("case", case, wait_seconds=30) as lock:
                self.settle_locked(case, gen, lock)
        except LockLost as exc:
            log.warning(
                "case %s not settled here: %s; its holder or the sweep settles it", case, exc
            )

    def settle_if_done(self, case: str, gen: str) -> None:
        if not self.books.remaining(case):
            self.settle(case, gen)

    def settle_locked(self, case: str, gen: str, lock: HeldLock) -> None:
        """:meth:`settle`, for a caller that holds the case ``lock`` (it is not re-entrant);
        LockLost if it passed on before the manifest is written."""
        manifest = casefiles.read_manifest(self.storage, case)
        if manifest is None or manifest.get("deliveryId") != gen:
            return
        if manifest["status"] != CaseStatus.PENDING:
            self.books.finish(case)
            return
        results = self.books.results(case)
        merged = {i: cast(Entry, {**manifest["files"][i], **entry}) for i, entry in results.items()}
        final = settle(manifest, merged)
        if final["status"] == CaseStatus.PENDING:
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
        self.storage.write_bytes(
            archive.case_key(case, archive.INDEX_HTML),
            render_case(final, payload).encode("utf-8"),
            sync_folder=False,  # durable with the manifest: one sync of the case folder
        )
        self._catalogue(case, final, payload)
        casefiles.write_manifest(self.storage, case, final, lock)
        self.books.finish(case)
        if self.on_settled is not None:
            self.on_settled(final)

    def _read_payload(self, case: str) -> Any:
        raw = casefiles.read(self.storage, case, archive.CASE_JSON)
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
            log.warning(
                "catalog not updated for %s (%s): `casefetch archive reindex` rebuilds it",
                manifest.get("cfRef"),
                exc,
            )
