"""The sweep: work that stopped moving is queued again.

One worker of the whole cluster (elected by a Redis lock) runs :func:`sweep_once` every
``sweep_interval_seconds``, on the :class:`Sweeper` thread the worker starts when it is ready.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from redis.exceptions import RedisError

from casefetch.constants import SWEEP_LOCK_KEY
from casefetch.protocol import delivery_from_inbox
from worker.bookkeeping import Busy
from worker.errors import INFRA_ERRORS
from worker.runtime import ORIGIN, Runtime
from worker.settings import WorkerSettings

log = logging.getLogger("casefetch.worker")


def sweep_once(runtime: Runtime, settings: WorkerSettings) -> list[str]:
    """Re-queue the work of every case that has made no progress for a while (except files a
    live worker holds), queue again deliveries whose messages were lost, and remove what dead
    writers left. Returns the cases whose work was queued again."""
    books = runtime.pipeline.books
    resumed = []
    for case in books.stuck(settings.stuck_after_seconds):
        try:
            # Busy: a worker is on it now. Wait only briefly: one busy case must not hold up
            # the others, nor the lost deliveries below.
            if runtime.pipeline.intake.resume(case, wait_seconds=1.0) == "resumed":
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
    removed = runtime.pipeline.storage.remove_stale_temp(
        settings.stale_temp_after_seconds, books.live_writers()
    )
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
        if books.requeue(delivery_from_inbox(delivery_id, entry), origin=ORIGIN):
            requeued += 1
    if requeued:
        log.warning(
            "sweep queued %d accepted delivery(ies) again, at the head of the queue: "
            "their messages were lost or are waiting behind a backlog",
            requeued,
        )
    return requeued


class Sweeper(threading.Thread):
    """Runs the sweep every interval in one worker of the whole cluster (a Redis lock elects it)."""

    def __init__(self, runtime: Callable[[], Runtime], settings: WorkerSettings) -> None:
        super().__init__(name="casefetch-sweeper", daemon=True)
        self.runtime = runtime
        self.settings = settings
        self.stopping = threading.Event()

    def run(self) -> None:
        interval = self.settings.sweep_interval_seconds
        while not self.stopping.wait(interval):
            try:
                runtime = self.runtime()
                if runtime.redis.set(SWEEP_LOCK_KEY, "1", nx=True, px=int(interval * 1000 * 0.9)):
                    sweep_once(runtime, self.settings)
            except INFRA_ERRORS as exc:  # the sweeper must outlive a Redis outage
                log.warning("sweep failed: %s; will try again", exc)
            except Exception:
                log.exception("sweep failed unexpectedly; will try again")
