"""What a worker tells operators: Prometheus metrics on its own port, and one log line per
delivery, per file and per settled case.

Nothing here changes what the pipeline does. It hooks in from the outside: Celery signals
bind ``deliveryId`` and ``cfRef`` to every log line of a task and count deliveries and task
retries; :func:`worker.app.build_worker` wraps the pipeline's fetcher and storage in
:class:`ObservedFetcher` and :class:`ObservedStorage` to time downloads and see quarantine
records, and hands the settler :func:`settled_cases`, which it tells of every case it settles.
The worker runs Celery's threads pool in one process, so one registry sees it all.

Queue depth, cases in progress and quarantine size are read at scrape time; the quarantine is
listed at most every ``QUARANTINE_REFRESH_SECONDS`` (listing S3 on every scrape would cost).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, BinaryIO

from celery import signals
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from casefetch import logs
from casefetch.constants import ACTIVE_CASES_KEY, ALL_QUEUES, DOWNLOAD_TASK, INGEST_TASK
from worker import archive
from worker.download import FetchResult, FileFetcher
from worker.errors import DownloadError, StorageError
from worker.manifest import FileStatus, Manifest
from worker.sniff import FileKind, FileType
from worker.storage import Staged, Storage

log = logging.getLogger("casefetch.worker")

QUARANTINE_REFRESH_SECONDS = 60.0


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.deliveries = Counter(
            "casefetch_worker_deliveries",
            "Deliveries ingested, by outcome (planned, duplicate, resumed, quarantined)",
            ["outcome"],
            registry=registry,
        )
        self.cases = Counter(
            "casefetch_worker_cases",
            "Cases settled, by outcome (complete, incomplete)",
            ["outcome"],
            registry=registry,
        )
        self.files = Counter(
            "casefetch_worker_files",
            "Files fetched, by outcome (stored, failed)",
            ["outcome", "kind"],
            registry=registry,
        )
        self.bytes = Counter(
            "casefetch_worker_downloaded_bytes", "Bytes of files stored", registry=registry
        )
        self.download_seconds = Histogram(
            "casefetch_worker_download_seconds",
            "Time to fetch one file, retries included",
            ["outcome"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=registry,
        )
        self.download_retries = Counter(
            "casefetch_worker_download_retries",
            "Download attempts beyond the first",
            registry=registry,
        )
        self.task_retries = Counter(
            "casefetch_worker_task_retries",
            "Tasks put back for later (lock busy, Redis or archive unavailable), by task",
            ["task"],
            registry=registry,
        )


class BacklogCollector(Collector):
    """Gauges read at scrape time: queue depth, cases in progress, quarantine size."""

    def __init__(
        self,
        redis_client: Any,
        storage: Storage,
        refresh_seconds: float = QUARANTINE_REFRESH_SECONDS,
    ) -> None:
        self.redis = redis_client
        self.storage = storage
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._quarantined: int | None = None
        self._counted_at = 0.0

    def quarantined(self) -> int | None:
        with self._lock:
            stale = time.monotonic() - self._counted_at > self.refresh_seconds
            if self._quarantined is None or stale:
                try:
                    self._quarantined = sum(
                        1
                        for key in self.storage.list(f"{archive.QUARANTINE}/")
                        if key.endswith(".json")
                    )
                    self._counted_at = time.monotonic()
                except (StorageError, OSError):
                    log.warning("cannot count the quarantine", exc_info=True)
            return self._quarantined

    def saw_quarantine(self) -> None:
        with self._lock:
            if self._quarantined is not None:
                self._quarantined += 1

    def collect(self) -> Iterable[Any]:
        quarantined = self.quarantined()
        if quarantined is not None:
            yield GaugeMetricFamily(
                "casefetch_quarantine_records", "Deliveries held in quarantine", value=quarantined
            )
        try:
            pipe = self.redis.pipeline(transaction=False)
            for queue in ALL_QUEUES:
                pipe.llen(queue)
            pipe.zcard(ACTIVE_CASES_KEY)
            *depths, active = pipe.execute()
        except (RedisError, OSError):
            return
        depth = GaugeMetricFamily(
            "casefetch_queue_depth", "Messages waiting, by queue", labels=["queue"]
        )
        for queue, length in zip(ALL_QUEUES, depths, strict=True):
            depth.add_metric([queue], int(length))
        yield depth
        yield GaugeMetricFamily(
            "casefetch_cases_in_progress", "Cases with downloads outstanding", value=int(active)
        )


class ObservedFetcher:
    """The pipeline's fetcher, timed and counted, logging one line per file."""

    def __init__(self, inner: FileFetcher, metrics: WorkerMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    def close(self) -> None:
        self.inner.close()

    def fetch_staged(
        self,
        url: str,
        kind: FileKind,
        storage: Storage,
        key_for: Callable[[FileType], str],
        step_action: str | None = None,
        owner: str | None = None,
    ) -> tuple[FetchResult, Staged]:
        started = time.perf_counter()
        try:
            result, staged = self.inner.fetch_staged(
                url, kind, storage, key_for, step_action, owner
            )
        except DownloadError as exc:
            self._failed(kind, started, exc)
            raise
        # The file's line is written when it takes its name.
        return result, _ObservedStaged(staged, lambda: self._stored(kind, started, result))

    def _failed(self, kind: FileKind, started: float, exc: DownloadError) -> None:
        attempts = int(getattr(exc, "attempts", 1))
        self._count(FileStatus.FAILED, kind, started, attempts)
        log.warning(
            "file failed",
            extra=logs.fields(
                kind=kind.value,
                status=FileStatus.FAILED.value,
                attempts=attempts,
                error=exc.message,
                seconds=round(time.perf_counter() - started, 3),
            ),
        )

    def _stored(self, kind: FileKind, started: float, result: FetchResult) -> None:
        self._count(FileStatus.STORED, kind, started, result.attempts)
        self.metrics.bytes.inc(result.size)
        log.info(
            "file stored",
            extra=logs.fields(
                kind=kind.value,
                status=FileStatus.STORED.value,
                key=result.key,
                bytes=result.size,
                sha256=result.sha256,
                attempts=result.attempts,
                seconds=round(time.perf_counter() - started, 3),
            ),
        )

    def _count(self, outcome: FileStatus, kind: FileKind, started: float, attempts: int) -> None:
        self.metrics.files.labels(outcome=outcome.value, kind=kind.value).inc()
        self.metrics.download_seconds.labels(outcome=outcome.value).observe(
            time.perf_counter() - started
        )
        if attempts > 1:
            self.metrics.download_retries.inc(attempts - 1)


class _ObservedStaged:
    """A staged file that reports itself stored when it is committed."""

    def __init__(self, inner: Staged, on_commit: Callable[[], None]) -> None:
        self.inner = inner
        self.key = inner.key
        self.on_commit = on_commit

    def write(self, data: bytes | memoryview, /) -> object:
        return self.inner.write(data)

    def commit(self, sync_folder: bool = True) -> None:
        self.inner.commit(sync_folder)
        self.on_commit()

    def discard(self) -> None:
        self.inner.discard()


def settled_cases(metrics: WorkerMetrics) -> Callable[[Manifest], None]:
    """What the settler tells of each case it settles: counted, and one line logged."""

    def settled(manifest: Manifest) -> None:
        status = str(manifest["status"])
        metrics.cases.labels(outcome=status).inc()
        files = manifest.get("files", [])
        with logs.bound(path=None):  # the file whose download settled it is not the point
            log.info(
                "case settled",
                extra=logs.fields(
                    cfRef=manifest.get("cfRef"),
                    deliveryId=manifest.get("deliveryId"),
                    status=status,
                    files=len(files),
                    stored=sum(1 for f in files if f.get("status") == FileStatus.STORED),
                    warnings=len(manifest.get("warnings") or []),
                ),
            )

    return settled


class ObservedStorage(Storage):
    """The pipeline's storage, watching new quarantine records."""

    def __init__(self, inner: Storage, backlog: BacklogCollector | None = None) -> None:
        self.inner = inner
        self.backlog = backlog

    def write_bytes(self, key: str, data: bytes, sync_folder: bool = True) -> None:
        self.inner.write_bytes(key, data, sync_folder)
        if key.startswith(f"{archive.QUARANTINE}/") and self.backlog is not None:
            self.backlog.saw_quarantine()

    def stage(
        self, key: str, cache: bool = True, owner: str | None = None
    ) -> contextlib.AbstractContextManager[Staged]:
        return self.inner.stage(key, cache, owner)

    def remove_stale_temp(
        self, older_than_seconds: float, live_owners: Collection[str] = frozenset()
    ) -> int:
        return self.inner.remove_stale_temp(older_than_seconds, live_owners)

    def sync_folders(self, keys: Iterable[str]) -> None:
        self.inner.sync_folders(keys)

    def read_bytes(self, key: str) -> bytes:
        return self.inner.read_bytes(key)

    def open_reader(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        return self.inner.open_reader(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def move(self, source: str, destination: str) -> None:
        self.inner.move(source, destination)

    def list(self, prefix: str) -> Iterator[str]:
        return self.inner.list(prefix)

    def describe(self) -> str:
        return self.inner.describe()


def _on_prerun(task: Any = None, args: Any = None, **_: Any) -> None:
    name = getattr(task, "name", None)
    first = args[0] if args else None
    if not isinstance(first, dict):
        return
    if name == INGEST_TASK:
        # The task binds the cfRef once it has the delivery (its message has the id only).
        logs.bind(deliveryId=first.get("deliveryId"))
    elif name == DOWNLOAD_TASK:
        logs.bind(deliveryId=first.get("gen"), cfRef=first.get("cfRef"), path=first.get("path"))


def install(app: Any, metrics: WorkerMetrics, port: int, addr: str = "0.0.0.0") -> None:
    """Count ``app``'s deliveries and retries, bind its tasks' log context, and when its
    worker starts, serve ``/metrics`` on ``port`` (0: not served)."""

    def starting(sender: Any = None, **kw: Any) -> None:
        if getattr(sender, "app", None) is app:
            serve(metrics, port, addr)

    def prerun(sender: Any = None, task: Any = None, args: Any = None, **kw: Any) -> None:
        if getattr(task, "app", None) is app:
            _on_prerun(task=task, args=args)

    def postrun(
        sender: Any = None, task: Any = None, retval: Any = None, state: Any = None, **kw: Any
    ) -> None:
        if getattr(task, "app", None) is not app:
            return
        if getattr(task, "name", None) == INGEST_TASK and state == "SUCCESS":
            metrics.deliveries.labels(outcome=str(retval)).inc()
            log.info("delivery ingested", extra=logs.fields(outcome=str(retval)))
        logs.clear()

    def retried(sender: Any = None, request: Any = None, **kw: Any) -> None:
        if getattr(sender, "app", None) is app:
            metrics.task_retries.labels(
                task=str(getattr(request, "task", None) or getattr(sender, "name", "?"))
            ).inc()

    signals.worker_init.connect(starting, weak=False)
    signals.task_prerun.connect(prerun, weak=False)
    signals.task_postrun.connect(postrun, weak=False)
    signals.task_retry.connect(retried, weak=False)


def serve(metrics: WorkerMetrics, port: int, addr: str = "0.0.0.0") -> None:
    if not port:
        return
    try:
        start_http_server(port, addr=addr, registry=metrics.registry)
    except OSError as exc:
        # A second worker on the same host must still work; it just exports nothing.
        log.warning(
            "worker metrics not served: cannot listen on %s:%d: %s", addr, port, exc.strerror
        )
        return
    log.info("worker metrics on http://%s:%d/metrics", addr, port)
