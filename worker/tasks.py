"""The Celery tasks: they only move data between the broker and the pipeline.

``ingest`` archives or quarantines one delivery (then fetches its case's first batch of
files itself); ``download`` fetches the files of one download message (:mod:`worker.batch`).
Both are retried while Redis or the archive is unavailable, or a lock is held elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

from celery import Task

from casefetch import logs
from casefetch.constants import DOWNLOAD_TASK, INGEST_TASK
from casefetch.protocol import Delivery, peek_cf_ref
from worker.batch import fetch_batch
from worker.bookkeeping import Busy
from worker.errors import INFRA_ERRORS
from worker.messages import DownloadMessage
from worker.runtime import Runtime, WorkerProcess
from worker.settings import WorkerSettings

log = logging.getLogger("casefetch.worker")

BUSY_RETRY_SECONDS = 5

F = TypeVar("F", bound=Callable[..., Any])


def register_tasks(app: Any, process: WorkerProcess) -> None:
    """Add the ingest and download tasks to ``app``, working with ``process``'s runtime."""

    def task(name: str, **options: Any) -> Callable[[F], F]:
        # Celery's decorator is untyped: the task keeps the function's signature.
        return cast(Callable[[F], F], app.task(name=name, shared=False, **options))

    @task(INGEST_TASK, bind=True, max_retries=None)
    def ingest(self: Task, delivery: Delivery) -> str:
        try:
            return run_ingest(process.runtime, delivery, process.fetches_downloads)
        except Busy as exc:
            raise self.retry(exc=exc, countdown=BUSY_RETRY_SECONDS) from exc
        except INFRA_ERRORS as exc:
            log.warning("ingest of %s postponed: %s", delivery.get("deliveryId"), exc)
            raise self.retry(exc=exc, countdown=backoff(self.request.retries)) from exc

    @task(DOWNLOAD_TASK, bind=True, max_retries=None)
    def download(self: Task, message: DownloadMessage) -> str:
        outcomes, postponed = fetch_batch(process.runtime, message)
        # Retrying the whole message is safe: files already recorded are skipped.
        if isinstance(postponed, Busy):
            busy = int(message.get("busyRetries", 0))
            if busy >= max_busy_retries(process.settings):
                # Its holder records it; if the holder died, its lock expired by now and the
                # sweep queues the file again once the case stops moving.
                log.info(
                    "files of %s still held by another worker: left to it", message.get("case")
                )
                return ",".join([*outcomes, "busy"])
            raise self.retry(
                args=[{**message, "busyRetries": busy + 1}], countdown=BUSY_RETRY_SECONDS
            )
        if postponed is not None:
            raise self.retry(exc=postponed, countdown=backoff(self.request.retries))
        return ",".join(outcomes)


def max_busy_retries(settings: WorkerSettings) -> int:
    """How often a download message that found a file held retries it: long enough for the
    lock of a holder that died to expire (its TTL is the visibility timeout), no longer."""
    return -(-settings.visibility_timeout_seconds // BUSY_RETRY_SECONDS) + 1


def run_ingest(runtime: Runtime, delivery: Delivery, fetch_first: bool = True) -> str:
    """What the ingest task does: archive or quarantine a delivery (given whole or as its
    inbox reference), then, with ``fetch_first``, fetch its case's first batch of files
    (see :meth:`Runtime.keep_first_download`). Raises Busy or one of INFRA_ERRORS when it
    must be tried again."""
    pipeline = runtime.pipeline
    try:
        received = pipeline.books.received(delivery)
        if received is None:
            log.info(
                "delivery %s is no longer in the inbox: already archived",
                delivery.get("deliveryId"),
            )
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
        pipeline.quarantine(
            delivery, "internal_error", {"_schema": [f"{type(exc).__name__}: {exc}"[:500]]}
        )
        pipeline.books.delivered(delivery["deliveryId"])
        return "quarantined"
    for message in kept:
        _fetch_kept(runtime, message)
    return outcome


def _fetch_kept(runtime: Runtime, message: DownloadMessage) -> None:
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


def backoff(retries: int) -> int:
    """Seconds before a task postponed by Redis or the store tries again: 1, 2, 4 ... 30.

    ``retries`` counts every earlier retry, the "file busy" ones too, so the ceiling stays
    low: work must resume within half a minute of the outage ending, however it waited."""
    return int(min(30, 2 ** min(retries, 5)))
