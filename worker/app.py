"""Where a worker is assembled: :func:`build_worker` is the one place that builds the Celery
app, its collaborators (Redis client, storage backend, fetcher, bookkeeping, pipeline), the
metrics around them and the sweeper. ``celery -A worker`` and ``casefetch worker`` both call it.

Celery is configured for at-least-once delivery:

- ``task_acks_late``: a message is acknowledged only when its task has finished, so a worker
  that dies mid-task leaves it in Redis;
- ``task_reject_on_worker_lost``: a task whose process was killed is requeued at once;
- ``worker_prefetch_multiplier = 1``: a worker holds no more messages than it can work on;
- the Redis transport's ``visibility_timeout`` (60 s) and a 5 s restore interval: a message
  held by a worker that vanished (SIGKILL, lost host) goes back to the queue within about a
  minute, instead of kombu's default hour. A download outliving it is redelivered to another
  worker, which finds the file lock held and leaves the file to its holder (retrying only as
  long as a dead holder's lock could last), so nothing runs twice.

Connections are opened lazily, in the process that uses them (no import-time connections),
and closed when the worker shuts down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import redis
from celery import Celery, signals
from kombu.entity import Exchange, Queue
from prometheus_client import CollectorRegistry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from casefetch.constants import ALL_QUEUES, DOWNLOAD_QUEUE, DOWNLOAD_TASK, INGEST_QUEUE, INGEST_TASK
from worker import observe
from worker.catalog import Catalog
from worker.download import Fetcher, FileFetcher
from worker.observe import (
    BacklogCollector,
    ObservedFetcher,
    ObservedStorage,
    WorkerMetrics,
    settled_cases,
)
from worker.runtime import Runtime, WorkerProcess
from worker.s3 import S3Storage
from worker.schemas import warm_up
from worker.settings import WorkerSettings
from worker.storage import LocalStorage, Storage
from worker.sweep import Sweeper
from worker.tasks import register_tasks


def build_worker(
    settings: WorkerSettings | None = None,
    *,
    redis_client: redis.Redis | None = None,
    storage: Storage | None = None,
    fetcher: FileFetcher | None = None,
) -> Any:
    """The Celery app of a worker, with everything it runs on. Collaborators handed in (a
    test's) are used as they are; the others are built from ``settings`` (by default the
    environment's) when the first task needs them. The app's ``casefetch`` attribute is its
    :class:`WorkerProcess`."""
    settings = settings or WorkerSettings.from_env()
    metrics = WorkerMetrics(CollectorRegistry())

    def build_runtime(process: WorkerProcess) -> Runtime:
        client = redis_client or settings.redis.client(**redis_options(settings))
        store = storage or make_storage(settings)
        backlog = BacklogCollector(client, store)
        metrics.registry.register(backlog)
        return Runtime(
            client,
            ObservedStorage(store, backlog),
            ObservedFetcher(fetcher or Fetcher(settings.download), metrics),
            process.download_threads,
            settings.visibility_timeout_seconds,
            Catalog(settings.catalog_path),
            settings.min_replicas_ack,
            settled_cases(metrics),
        )

    process = WorkerProcess(settings, build_runtime)
    app = Celery("casefetch", broker=settings.redis.url, set_as_current=False)
    app.casefetch = process
    app.conf.update(celery_config(settings))
    register_tasks(app, process)
    observe.install(app, metrics, settings.metrics_port)
    _install_lifecycle(app, process)
    return app


#: How long a worker's Redis commands, and a task's retry message, keep trying through a
#: failover (the sentinels' down-after time and an election), about 35 s: long enough for a
#: failover, so that a download in flight is not thrown away because its bookkeeping failed.
FAILOVER_RETRIES = 40
FAILOVER_BACKOFF = ExponentialBackoff(cap=1.0, base=0.05)


def redis_options(settings: WorkerSettings) -> dict[str, Any]:
    """The worker's redis-py client options."""
    options: dict[str, Any] = {
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
    }
    if settings.redis.uses_sentinel:
        options["retry"] = Retry(FAILOVER_BACKOFF, FAILOVER_RETRIES)
    return options


def make_storage(settings: WorkerSettings) -> Storage:
    """The archive's backend, as STORAGE_BACKEND names it."""
    if settings.storage_backend == "s3":
        return S3Storage.from_settings(settings)
    return LocalStorage(settings.archive_dir)


def celery_config(settings: WorkerSettings) -> dict[str, Any]:
    return {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_pool": "threads",
        "worker_concurrency": 8,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": INGEST_QUEUE,
        # `celery -A worker worker` without -Q consumes every queue, like `casefetch worker`.
        "task_queues": [_queue(name) for name in ALL_QUEUES],
        "task_routes": {
            INGEST_TASK: {"queue": INGEST_QUEUE},
            DOWNLOAD_TASK: {"queue": DOWNLOAD_QUEUE},
        },
        "task_create_missing_queues": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_seconds,
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            **settings.redis.transport_options(),
        },
        **_failover_publishing(settings),
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }


def _failover_publishing(settings: WorkerSettings) -> dict[str, Any]:
    """Under Sentinel, a task postponed during a failover publishes its retry once the new
    primary is up (Celery's default gives up after about a second, and then drops the
    message: the sweep would find its work only minutes later)."""
    if not settings.redis.uses_sentinel:
        return {}
    return {
        "task_publish_retry_policy": {
            "max_retries": FAILOVER_RETRIES,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 1,
        }
    }


def _queue(name: str) -> Queue:
    exchange = cast(Callable[[str], Exchange], Exchange)  # kombu leaves these untyped
    return cast(Callable[..., Queue], Queue)(name, exchange(name), routing_key=name)


def _install_lifecycle(app: Any, process: WorkerProcess) -> None:
    """When the worker starts: size the file threads, warm the schemas; once it is ready:
    start the sweeper; when it shuts down: stop the sweeper, close every connection."""
    holder: dict[str, Sweeper] = {}

    def starting(sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        if getattr(sender, "concurrency", None):
            process.download_threads = int(sender.concurrency)
        process.fetches_downloads = DOWNLOAD_QUEUE in sender.app.amqp.queues.consume_from
        warm_up()

    def ready(sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "app", None) is app:
            holder["sweeper"] = Sweeper(lambda: process.runtime, process.settings)
            holder["sweeper"].start()

    def stopping(sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        sweeper = holder.pop("sweeper", None)
        if sweeper is not None:
            sweeper.stopping.set()
            sweeper.join(timeout=5)
        process.close()

    signals.worker_init.connect(starting, weak=False)
    signals.worker_ready.connect(ready, weak=False)
    signals.worker_shutdown.connect(stopping, weak=False)


def worker_argv(
    queues: list[str] | None, concurrency: int | None, loglevel: str = "INFO"
) -> list[str]:
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--queues={','.join(queues or ALL_QUEUES)}",
        "--without-gossip",
        "--without-mingle",
    ]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    return argv
