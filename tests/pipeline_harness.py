"""The worker's pipeline in-process: real LocalStorage, real Redis bookkeeping, a real fetcher.

Downloads the ingest step hands on are collected and run in this process, in order, so a
test sees a delivery through to its end (archived or quarantined) in milliseconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from casefetch.protocol import make_delivery
from worker.bookkeeping import Bookkeeping
from worker.download import Fetcher
from worker.pipeline import Pipeline, file_jobs
from worker.settings import DownloadSettings
from worker.storage import LocalStorage, Storage


@dataclass
class Harness:
    storage: Storage
    client: redis.Redis
    jobs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        settings = DownloadSettings(allow_private_networks=True, allowed_hosts=("127.0.0.1",),
                                    max_attempts=1, timeout_seconds=2.0, max_bytes=1024 * 1024)
        self.pipeline = Pipeline(self.storage, Bookkeeping(self.client),
                                 Fetcher(settings, sleep=lambda _: None), self.jobs.append)

    def deliver(self, body: bytes) -> dict[str, Any]:
        """Ingest ``body`` and run its downloads; return how it ended."""
        delivery = make_delivery(body, {"Content-Type": "application/json"})
        outcome = self.pipeline.ingest(delivery)
        while self.jobs:
            for job in file_jobs(self.jobs.pop(0)):
                self.pipeline.download(job)
        return {"deliveryId": delivery["deliveryId"], "outcome": outcome}

    def quarantine(self, delivery_id: str) -> dict[str, Any] | None:
        key = f"quarantine/{delivery_id}.json"
        return json.loads(self.storage.read_bytes(key)) if self.storage.exists(key) else None

    def manifest(self, case: str) -> dict[str, Any] | None:
        key = f"{case}/manifest.json"
        return json.loads(self.storage.read_bytes(key)) if self.storage.exists(key) else None

    def manifests(self) -> list[dict[str, Any]]:
        return [json.loads(self.storage.read_bytes(key)) for key in self.storage.list("cases/")
                if key.endswith("/manifest.json")]


def harness(root: Path, redis_url: str, storage: Storage | None = None) -> Harness:
    """A harness on ``root``, its bookkeeping in a Redis database the session worker ignores."""
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/6")
    client.flushdb()  # bookkeeping of an earlier test's cases must not leak into this one
    return Harness(storage or LocalStorage(root), client)
