"""The local archive read the way an operator would: a case's folder, its manifest, the
quarantine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.waiting import wait_for
from worker.archive import case_dir


class Archive:
    """Reading the local archive the way an operator would."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def case(self, cf_ref: str) -> Path:
        return self.root / case_dir(cf_ref)

    def manifest(self, cf_ref: str) -> dict[str, Any] | None:
        path = self.case(cf_ref) / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else None

    def settled(self, cf_ref: str, timeout: float = 30.0) -> dict[str, Any]:
        """The manifest once the case is no longer pending."""

        def done() -> dict[str, Any] | None:
            manifest = self.manifest(cf_ref)
            return manifest if manifest and manifest["status"] != "pending" else None

        return wait_for(done, timeout=timeout, message=f"case {cf_ref} to settle")

    def quarantined(self, delivery_id: str, timeout: float = 20.0) -> dict[str, Any]:
        path = self.root / "quarantine" / f"{delivery_id}.json"
        wait_for(path.exists, timeout=timeout, message=f"quarantine of {delivery_id}")
        record: dict[str, Any] = json.loads(path.read_text())
        return record
