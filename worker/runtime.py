"""A worker process's collaborators, as :func:`worker.app.build_worker` assembles them: the
Redis client, the pipeline over its storage and fetcher, and the threads files are fetched on.

:class:`WorkerProcess` holds them for the tasks, built on first use, in the process that uses
them (importing the app opens nothing), and closes them when the worker shuts down.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import redis

from casefetch.constants import DOWNLOAD_QUEUE, DOWNLOAD_TASK
from casefetch.protocol import task_message
from worker.bookkeeping import Bookkeeping
from worker.catalog import Catalog
from worker.download import FileFetcher
from worker.manifest import Manifest
from worker.messages import DownloadMessage
from worker.pipeline import Pipeline
from worker.settings import WorkerSettings
from worker.storage import Storage

ORIGIN = f"casefetch-worker@{socket.gethostname()}"


class Runtime:
    """The per-process collaborators, handed in (a test hands in its own)."""

    def __init__(
        self,
        client: redis.Redis,
        storage: Storage,
        fetcher: FileFetcher,
        download_threads: int = 8,
        lock_seconds: float = 60.0,
        catalog: Catalog | None = None,
        replicas: int = 0,
        on_settled: Callable[[Manifest], None] | None = None,
    ) -> None:
        self.redis = client
        # A file lock outlives its holder by at most lock_seconds (the visibility timeout),
        # so work redelivered after a crash waits no longer than the message did.
        self.pipeline = Pipeline(
            storage=storage,
            books=Bookkeeping(client, lock_seconds=lock_seconds, replicas=replicas),
            fetcher=fetcher,
            send_download=self.send_download,
            catalog=catalog,
            on_settled=on_settled,
        )
        self.files = ThreadPoolExecutor(
            max_workers=download_threads, thread_name_prefix="casefetch-file"
        )
        self._kept = threading.local()

    def send_download(self, job: DownloadMessage) -> None:
        kept: list[DownloadMessage] | None = getattr(self._kept, "messages", None)
        if kept is not None and not kept:
            kept.append(job)  # the ingest task fetches it itself (see keep_first_download)
            return
        self.publish_download(job)

    def publish_download(self, job: DownloadMessage) -> None:
        # The message Celery's send_task would publish, in one LPUSH: a case of a thousand
        # files is planned without a thousand trips through Celery's publisher.
        self.redis.lpush(
            DOWNLOAD_QUEUE, task_message(DOWNLOAD_TASK, DOWNLOAD_QUEUE, [job], origin=ORIGIN)
        )

    @contextlib.contextmanager
    def keep_first_download(self, keep: bool = True) -> Iterator[list[DownloadMessage]]:
        """Within the block, this thread's first download message is kept, not queued
        (unless ``keep`` is off).

        An ingest task fetches its case's first batch of files (all of them, for a case of
        up to BATCH_FILES) itself: a Celery task, a queue round trip and a message less per
        case. The other batches still go to the queue, for every worker to share.
        """
        kept: list[DownloadMessage] = []
        self._kept.messages = kept if keep else None
        try:
            yield kept
        finally:
            self._kept.messages = None

    def close(self) -> None:
        """Stop the file threads and close every connection (the worker is shutting down)."""
        self.files.shutdown(wait=True)
        self.pipeline.fetcher.close()
        self.redis.close()


class WorkerProcess:
    """What the tasks of one worker process share: its settings and its :class:`Runtime`."""

    def __init__(self, settings: WorkerSettings, build: Callable[[WorkerProcess], Runtime]) -> None:
        self.settings = settings
        self._build = build
        self._runtime: Runtime | None = None
        self._lock = threading.Lock()
        #: Files fetched at once: the worker's concurrency (set when the worker starts).
        self.download_threads = 8
        #: Whether this worker consumes the download queue (set when the worker starts): only
        #: then does its ingest fetch a case's first batch itself. A worker kept for ingest
        #: (``--queues casefetch.ingest``, cheap and quick) hands every batch on.
        self.fetches_downloads = False

    @property
    def runtime(self) -> Runtime:
        with self._lock:
            if self._runtime is None:
                self._runtime = self._build(self)
            return self._runtime

    def close(self) -> None:
        with self._lock:
            runtime, self._runtime = self._runtime, None
        if runtime is not None:
            runtime.close()
