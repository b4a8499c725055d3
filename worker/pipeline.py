"""The worker's work over one storage and bookkeeping, by concept: :mod:`worker.ingest` plans
a delivery's case, :mod:`worker.files` fetches and commits its files (run a message at a
time by :mod:`worker.batch`), :mod:`worker.settle` writes its final manifest, and
:mod:`worker.quarantine` keeps what cannot be archived.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from casefetch.protocol import Delivery
from worker.bookkeeping import Bookkeeping
from worker.catalog import Catalog
from worker.download import FileFetcher
from worker.files import Files
from worker.ingest import Ingest, SendDownload
from worker.manifest import Manifest
from worker.quarantine import quarantine
from worker.settle import Settler
from worker.storage import Storage


@dataclass
class Pipeline:
    storage: Storage
    books: Bookkeeping
    fetcher: FileFetcher
    send_download: SendDownload
    #: Where settled cases are listed for the archive browser (None: not kept).
    catalog: Catalog | None = None
    #: Told of every case settled (see :attr:`Settler.on_settled`).
    on_settled: Callable[[Manifest], None] | None = None
    settler: Settler = field(init=False)
    intake: Ingest = field(init=False)
    files: Files = field(init=False)

    def __post_init__(self) -> None:
        self.settler = Settler(self.storage, self.books, self.catalog, self.on_settled)
        self.intake = Ingest(self.storage, self.books, self.settler, self.send_download)
        self.files = Files(self.storage, self.books, self.fetcher, self.settler)

    def ingest(self, delivery: Delivery) -> str:
        """Archive or quarantine one delivery; return what happened (for logs and tests)."""
        return self.intake.ingest(delivery)

    def quarantine(self, delivery: Delivery, reason: str, errors: Any) -> None:
        quarantine(self.storage, delivery, reason, errors)
