"""The Celery application and its tasks.

``create_celery_app(settings)`` configures Celery for at-least-once delivery:

- ``task_acks_late``: a message is acknowledged only when its task has finished, so a worker
  that dies mid-task leaves it in Redis;
- ``task_reject_on_worker_lost``: a task whose process was killed is requeued at once;
- ``worker_prefetch_multiplier = 1``: a worker holds no more messages than it can work on;
- the Redis transport's ``visibility_timeout`` (60 s) and a 5 s restore interval: a message
  held by a worker that vanished (SIGKILL, lost host) goes back to the queue within about a
  minute, instead of kombu's default hour. A download outliving it is redelivered to another
  worker, which finds the file lock held and leaves the file to its holder (retrying only as
  long as a dead holder's lock could last), so nothing runs twice.

Connections are opened lazily, in the process that uses them (no import-time connections).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from celery import Celery, Task, signals
from kombu.entity import Exchange, Queue
from redis.exceptions import RedisError

from casefetch import logs
from casefetch.constants import (
    ALL_QUEUES,
    DOWNLOAD_QUEUE,
    DOWNLOAD_TASK,
    INGEST_QUEUE,
    INGEST_TASK,
    MAINTENANCE_QUEUE,
    SWEEP_LOCK_KEY,
    SWEEP_TASK,
)
from casefetch.protocol import Delivery, delivery_from_inbox, peek_cf_ref, task_message
from worker.errors import StorageError
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    import redis

    from worker.bookkeeping import Claim
    from worker.catalog import Catalog
    from worker.download import Fetcher
    from worker.pipeline import Finished, Pipeline
    from worker.storage import Storage

log = logging.getLogger("casefetch.worker")
_ORIGIN = f"casefetch-worker@{socket.gethostname()}"

#: Failures of the infrastructure (Redis, the archive): retried until they pass.
INFRA_ERRORS = (RedisError, StorageError, OSError)
BUSY_RETRY_SECONDS = 5
#: How long a fetched file of a batch may wait (verified, staged) for the others, so that
#: they are put in place and recorded together. A file whose download is slower (a large
#: one, or one retried after a backoff) does not hold the others back longer than this.
COMMIT_EVERY_SECONDS = 0.5


class Runtime:
    """The per-process collaborators: handed in (a test hands in its own), or built from the
    settings by :meth:`build`."""

    def __init__(self, client: redis.Redis, storage: Storage, fetcher: Fetcher,
                 download_threads: int = 8, lock_seconds: float = 60.0,
                 catalog: Catalog | None = None) -> None:
        from worker.bookkeeping import Bookkeeping
        from worker.pipeline import Pipeline

        self.redis = client
        # A file lock outlives its holder by at most lock_seconds (the visibility timeout),
        # so work redelivered after a crash waits no longer than the message did.
        self.pipeline = Pipeline(storage=storage,
                                 books=Bookkeeping(client, lock_seconds=lock_seconds),
                                 fetcher=fetcher, send_download=self.send_download,
                                 catalog=catalog)
        self.files = ThreadPoolExecutor(max_workers=download_threads,
                                        thread_name_prefix="casefetch-file")
        self._kept = threading.local()

    @classmethod
    def build(cls, settings: WorkerSettings, download_threads: int) -> Runtime:
        import redis

        from worker.catalog import Catalog
        from worker.download import Fetcher
        from worker.storage import make_storage

        client = redis.Redis.from_url(settings.redis_url, socket_timeout=10,
                                      socket_connect_timeout=5, health_check_interval=30)
        return cls(client, make_storage(settings), Fetcher(settings.download),
                   download_threads, settings.visibility_timeout_seconds,
                   Catalog(settings.catalog_path))

    def send_download(self, job: dict[str, Any]) -> None:
        kept: list[dict[str, Any]] | None = getattr(self._kept, "messages", None)
        if kept is not None and not kept:
            kept.append(job)  # the ingest task fetches it itself (see keep_first_download)
            return
        self.publish_download(job)

    def publish_download(self, job: dict[str, Any]) -> None:
        # The message Celery's send_task would publish, in one LPUSH: a case of a thousand
        # files is planned without a thousand trips through Celery's publisher.
        self.redis.lpush(DOWNLOAD_QUEUE, task_message(DOWNLOAD_TASK, DOWNLOAD_QUEUE, [job],
                                                      origin=_ORIGIN))

    @contextlib.contextmanager
    def keep_first_download(self, keep: bool = True) -> Iterator[list[dict[str, Any]]]:
        """Within the block, this thread's first download message is kept, not queued
        (unless ``keep`` is off).

        An ingest task fetches its case's first batch of files (all of them, for a case of
        up to BATCH_FILES) itself: a Celery task, a queue round trip and a message less per
        case. The other batches still go to the queue, for every worker to share.
        """
        kept: list[dict[str, Any]] = []
        self._kept.messages = kept if keep else None
        try:
            yield kept
        finally:
            self._kept.messages = None


class CasefetchCelery(Celery):
    def __init__(self, settings: WorkerSettings, **kwargs: Any) -> None:
        super().__init__("casefetch", broker=settings.redis_url, **kwargs)
        self.settings = settings
        self._runtime: Runtime | None = None
        #: Files fetched at once: the worker's concurrency (set when the worker starts).
        self.download_threads = 8
        #: Whether this worker consumes the download queue (set when the worker starts): only
        #: then does its ingest fetch a case's first batch itself. A worker kept for ingest
        #: (``--queues casefetch.ingest``, cheap and quick) hands every batch on.
        self.fetches_downloads = False
        self._runtime_lock = threading.Lock()

    @property
    def runtime(self) -> Runtime:
        with self._runtime_lock:
            if self._runtime is None:
                self._runtime = Runtime.build(self.settings, self.download_threads)
            return self._runtime


def create_celery_app(settings: WorkerSettings | None = None) -> CasefetchCelery:
    settings = settings or WorkerSettings.from_env()
    app = CasefetchCelery(settings, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_pool="threads",
        worker_concurrency=8,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=INGEST_QUEUE,
        # `celery -A worker worker` without -Q consumes every queue, like `casefetch worker`.
        task_queues=[Queue(name, Exchange(name), routing_key=name) for name in ALL_QUEUES],
        task_routes={INGEST_TASK: {"queue": INGEST_QUEUE},
                     DOWNLOAD_TASK: {"queue": DOWNLOAD_QUEUE},
                     SWEEP_TASK: {"queue": MAINTENANCE_QUEUE}},
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_seconds,
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    _register_tasks(app)

    @signals.worker_init.connect(weak=False)
    def starting(sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        if getattr(sender, "concurrency", None):
            app.download_threads = int(sender.concurrency)
        app.fetches_downloads = DOWNLOAD_QUEUE in app.amqp.queues.consume_from
        from worker.schemas import warm_up

        warm_up()

    return app


def _register_tasks(app: CasefetchCelery) -> None:
    @app.task(name=INGEST_TASK, bind=True, max_retries=None, shared=False)
    def ingest(self: Task, delivery: Delivery) -> str:
        from worker.bookkeeping import Busy

        try:
            return run_ingest(app.runtime, delivery, app.fetches_downloads)
        except Busy as exc:
            raise self.retry(exc=exc, countdown=BUSY_RETRY_SECONDS) from exc
        except INFRA_ERRORS as exc:
            log.warning("ingest of %s postponed: %s", delivery.get("deliveryId"), exc)
            raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from exc

    @app.task(name=DOWNLOAD_TASK, bind=True, max_retries=None, shared=False)
    def download(self: Task, message: dict[str, Any]) -> str:
        from worker.bookkeeping import Busy

        outcomes, postponed = fetch_batch(app.runtime, message)
        # Retrying the whole message is safe: files already recorded are skipped.
        if isinstance(postponed, Busy):
            busy = int(message.get("busyRetries", 0))
            if busy >= max_busy_retries(app.settings):
                # Its holder records it; if the holder died, its lock expired by now and the
                # sweep queues the file again once the case stops moving.
                log.info("files of %s still held by another worker: left to it",
                         message.get("case"))
                return ",".join([*outcomes, "busy"])
            raise self.retry(args=[{**message, "busyRetries": busy + 1}],
                             countdown=BUSY_RETRY_SECONDS)
        if postponed is not None:
            raise self.retry(exc=postponed, countdown=_backoff(self.request.retries))
        return ",".join(outcomes)

    @app.task(name=SWEEP_TASK, shared=False)
    def sweep() -> list[str]:
        return run_sweep(app)


def max_busy_retries(settings: WorkerSettings) -> int:
    """How often a download message that found a file held retries it: long enough for the
    lock of a holder that died to expire (its TTL is the visibility timeout), no longer."""
    return -(-settings.visibility_timeout_seconds // BUSY_RETRY_SECONDS) + 1


def run_ingest(runtime: Runtime, delivery: Delivery, fetch_first: bool = True) -> str:
    """What the ingest task does: archive or quarantine a delivery (given whole or as its
    inbox reference), then, with ``fetch_first``, fetch its case's first batch of files
    (see :meth:`Runtime.keep_first_download`). Raises Busy or one of INFRA_ERRORS when it
    must be tried again."""
    from worker.bookkeeping import Busy

    pipeline = runtime.pipeline
    try:
        received = pipeline.books.received(delivery)
        if received is None:
            log.info("delivery %s is no longer in the inbox: already archived",
                     delivery.get("deliveryId"))
            return "duplicate"
        delivery = received
        logs.bind(cfRef=peek_cf_ref(delivery))
        with runtime.keep_first_download(fetch_first) as kept:
            outcome = pipeline.ingest(delivery)
    except (Busy, *INFRA_ERRORS):
        raise
    except Exception as exc:
        # A bug must not lose the delivery: keep it where an operator will see it.
        log.exception("ingest of %s failed unexpectedly", delivery.get("deliveryId"))
        pipeline.quarantine(delivery, "internal_error",
                            {"_schema": [f"{type(exc).__name__}: {exc}"[:500]]})
        pipeline.books.delivered(delivery["deliveryId"])
        return "quarantined"
    for message in kept:
        _fetch_kept(runtime, message)
    return outcome


def _fetch_kept(runtime: Runtime, message: dict[str, Any]) -> None:
    """Fetch the batch an ingest kept; what must wait goes to the download queue, whose
    task retries it as usual (the delivery itself is archived: it must not be retried).
    Raises one of INFRA_ERRORS when the batch can be neither fetched nor queued: the
    ingest, tried again, finds the case planned and queues what it still needs."""
    try:
        _outcomes, postponed = fetch_batch(runtime, message)
    except Exception:
        log.exception("downloads of %s failed unexpectedly; queued", message.get("case"))
        postponed = RuntimeError("queued")
    if postponed is not None:
        runtime.publish_download(message)


def fetch_batch(runtime: Runtime, message: dict[str, Any]
                ) -> tuple[list[str], BaseException | None]:
    """Fetch the files of a download message; their outcomes, and why to come back, if so.

    One round trip claims every file of the message. The files are then fetched side by
    side, on threads the whole process shares (as many as it runs tasks), so a batch is as
    quick as its files were as separate tasks. The files that finished are committed
    together, when the last one is done or every COMMIT_EVERY_SECONDS: one round trip for
    their intents, one fsync per folder, one round trip to record them and release their
    locks. A file is counted as stored only after its folder was synced.
    """
    from worker.bookkeeping import Busy
    from worker.pipeline import file_jobs

    pipeline = runtime.pipeline
    jobs = file_jobs(message)
    if not jobs:
        return [], None
    case, gen = jobs[0]["case"], jobs[0]["gen"]
    try:
        claims = pipeline.claim_batch(jobs)
    except INFRA_ERRORS as exc:
        log.warning("downloads of %s postponed: %s", case, exc)
        return [], exc
    batch = _Batch(pipeline, case, gen)
    running: dict[Future[Finished], tuple[dict[str, Any], Claim]] = {}
    for job, claim in zip(jobs, claims, strict=True):
        if claim.lock is not None:
            claim.lock.__enter__()  # renewed from now on; commit (or release) lets it go
            running[runtime.files.submit(_fetch_file, pipeline, job, claim)] = (job, claim)
        elif claim.status == "busy":
            batch.postpone(Busy(f"file:{case}:{job['path']}"))  # come back for it
        else:
            batch.outcomes.append(claim.status)
    waiting: set[Future[Finished]] = set(running)
    while waiting:
        finished, waiting = wait(waiting, timeout=COMMIT_EVERY_SECONDS)
        if finished:
            batch.commit([(*running[future], future) for future in finished])
    batch.settle_if_redelivered()
    return batch.outcomes, batch.postponed


class _Batch:
    """The outcomes of one download message, committed group by group."""

    def __init__(self, pipeline: Pipeline, case: str, gen: str) -> None:
        self.pipeline = pipeline
        self.case = case
        self.gen = gen
        self.outcomes: list[str] = []
        self.postponed: BaseException | None = None
        self.committed = False

    def postpone(self, exc: BaseException) -> None:
        self.postponed = self.postponed or exc

    def commit(self, finished: list[tuple[dict[str, Any], Claim, Future[Finished]]]) -> None:
        from worker.bookkeeping import Busy
        from worker.pipeline import Finished, failed_entry, release

        group = []
        for job, claim, future in finished:
            try:
                group.append(future.result())
            except INFRA_ERRORS as exc:
                log.warning("download %s/%s postponed: %s", self.case, job.get("path"), exc)
                self.postponed = exc
                if claim.lock is not None:
                    release(claim.lock)
            except Exception as exc:
                # A bug must not leave the case pending for ever: record the file as failed.
                log.error("download %s/%s failed unexpectedly", self.case, job.get("path"),
                          exc_info=exc)
                group.append(Finished(job, claim, failed_entry(
                    job, f"internal error: {type(exc).__name__}: {exc}")))
        if not group:
            return
        try:
            self.pipeline.commit(self.case, self.gen, group)
        except (Busy, *INFRA_ERRORS) as exc:
            log.warning("downloads of %s postponed: %s", self.case, exc)
            self.postponed = exc
            return
        self.committed = True
        self.outcomes += [str(f.entry["status"]) for f in group]

    def settle_if_redelivered(self) -> None:
        """Every file was fetched already (a redelivered message): make sure the case is
        settled."""
        from worker.bookkeeping import Busy

        if "done" not in self.outcomes or self.committed or self.postponed is not None:
            return
        try:
            self.pipeline.settle_if_done(self.case, self.gen)
        except (Busy, *INFRA_ERRORS) as exc:
            self.postponed = exc


def _fetch_file(pipeline: Pipeline, job: dict[str, Any], claim: Claim) -> Finished:
    with logs.bound(deliveryId=job.get("gen"), cfRef=job.get("cfRef"), path=job.get("path")):
        return pipeline.fetch_claimed(job, claim)


def run_sweep(app: CasefetchCelery) -> list[str]:
    return sweep_once(app.runtime, app.settings)


def sweep_once(runtime: Runtime, settings: WorkerSettings) -> list[str]:
    """Re-queue the work of every case that has made no progress for a while (except files a
    live worker holds), queue again deliveries whose messages were lost, and remove what dead
    writers left. Returns the cases whose work was queued again."""
    from worker.bookkeeping import Busy
    from worker.pipeline import resume

    books = runtime.pipeline.books
    resumed = []
    for case in books.stuck(settings.stuck_after_seconds):
        try:
            # Busy: a worker is on it now. Wait only briefly: one busy case must not hold up
            # the others, nor the lost deliveries below.
            if resume(runtime.pipeline, case, wait_seconds=1.0) == "resumed":
                resumed.append(case)
        except Busy:
            continue
        except RedisError:
            raise  # Redis is down: so is every other case's resume; the sweeper waits
        except Exception:
            log.exception("sweep could not resume %s; the next sweep tries again", case)
    if resumed:
        log.info("sweep re-queued work of %d stuck case(s)", len(resumed))
    requeue_lost_deliveries(runtime, settings)
    # A download's file lock is its heartbeat: what it writes is kept, however slowly it goes.
    removed = runtime.pipeline.storage.remove_stale_temp(settings.stale_temp_after_seconds,
                                                         books.live_writers())
    if removed:
        log.info("sweep removed %d temporary file(s) left by dead writers", removed)
    return resumed


def requeue_lost_deliveries(runtime: Runtime, settings: WorkerSettings) -> int:
    """Queue again, at the head of the ingest queue, the accepted deliveries still in the
    inbox a visibility timeout after they were (last) queued.

    By then kombu has handed back what a dead worker held: what is still there was lost
    (popped by a worker, then Redis died before kombu noted it), or is waiting behind a
    backlog, or is being retried. Which of these cannot be told cheaply, and need not be:
    ingest is idempotent, and a message whose delivery was archived meanwhile finds the inbox
    empty and costs one read. At the head, the delivery is taken next however long the
    queue, so a lost one is archived within two minutes even under a backlog that never
    drains; its clock restarts, so no delivery is queued again more than once a timeout.
    """
    books = runtime.pipeline.books
    requeued = 0
    # The oldest last, so that it is first in line.
    for delivery_id, entry in reversed(books.undelivered(settings.visibility_timeout_seconds)):
        # A fresh message (new delivery tag) for the same delivery.
        if books.requeue(delivery_from_inbox(delivery_id, entry), origin=_ORIGIN):
            requeued += 1
    if requeued:
        log.warning("sweep queued %d accepted delivery(ies) again, at the head of the queue: "
                    "their messages were lost or are waiting behind a backlog", requeued)
    return requeued


def _backoff(retries: int) -> int:
    """Seconds before a task postponed by Redis or the store tries again: 1, 2, 4 ... 30.

    ``retries`` counts every earlier retry, the "file busy" ones too, so the ceiling stays
    low: work must resume within half a minute of the outage ending, however it waited."""
    return int(min(30, 2 ** min(retries, 5)))


class Sweeper(threading.Thread):
    """Runs the sweep every interval in one worker of the whole cluster (a Redis lock elects it)."""

    def __init__(self, app: CasefetchCelery) -> None:
        super().__init__(name="casefetch-sweeper", daemon=True)
        self.app = app
        self.stopping = threading.Event()

    def run(self) -> None:
        interval = self.app.settings.sweep_interval_seconds
        while not self.stopping.wait(interval):
            try:
                client = self.app.runtime.redis
                if client.set(SWEEP_LOCK_KEY, "1", nx=True, px=int(interval * 1000 * 0.9)):
                    run_sweep(self.app)
            except Exception:  # the sweeper must outlive a Redis outage
                log.warning("sweep failed; will try again", exc_info=True)


def install_sweeper(app: CasefetchCelery) -> None:
    holder: dict[str, Sweeper] = {}

    @signals.worker_ready.connect(weak=False)
    def start(sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "app", None) is app:
            holder["sweeper"] = Sweeper(app)
            holder["sweeper"].start()

    @signals.worker_shutdown.connect(weak=False)
    def stop(sender: Any = None, **kwargs: Any) -> None:
        if "sweeper" in holder:
            holder["sweeper"].stopping.set()


def worker_argv(queues: list[str] | None, concurrency: int | None,
                loglevel: str = "INFO") -> list[str]:
    argv = ["worker", f"--loglevel={loglevel}",
            f"--queues={','.join(queues or ALL_QUEUES)}", "--without-gossip", "--without-mingle"]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    return argv
