"""`casefetch worker`: a Celery worker process, built by worker.app.build_worker, started
again in place when Celery gives up on a dropped connection."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any, NoReturn

import click
from celery import signals

from casefetch import logs
from casefetch.constants import ALL_QUEUES
from casefetch.errors import CasefetchError
from casefetch_tools.exits import fail
from worker.app import build_worker, make_storage, worker_argv
from worker.settings import WorkerSettings


@click.command()
@click.option("--queues", default=None, help="Comma-separated queues (default: all).")
@click.option("--concurrency", default=None, type=click.IntRange(1), help="Parallel tasks.")
@click.option(
    "--loglevel",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
)
def worker(queues: str | None, concurrency: int | None, loglevel: str) -> None:
    """Run a Celery worker."""
    chosen = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    unknown = set(chosen or []) - set(ALL_QUEUES)
    if unknown:
        fail(f"unknown queue(s) {', '.join(sorted(unknown))}; known: {', '.join(ALL_QUEUES)}")
    try:
        settings = WorkerSettings.from_env()
        make_storage(settings)  # a broken storage setting stops the worker, not a task
    except CasefetchError as exc:
        fail(str(exc))
    logs.setup(loglevel.upper())
    app = build_worker(settings)
    ending = watch_worker_end()
    started = time.monotonic()
    returned = app.start(worker_argv(chosen, concurrency, loglevel))
    code = ending.code if ending.code is not None else returned
    if code and not ending.requested.is_set():
        restart_worker(code, ran_seconds=time.monotonic() - started)
    sys.exit(code or 0)


#: A worker that ran this long before it broke is not failing in a loop.
STEADY_SECONDS = 60.0


class WorkerEnd:
    """How the Celery worker stopped: ``requested`` is set when it was asked to (a signal), not
    because it broke; ``code`` is the exit code it stopped with.

    ``app.start`` cannot tell: with click 8.2 and later it returns None whatever the worker's
    exit code, so a worker that gave up ("Unrecoverable error") exited 0 and never restarted.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.code: int | None = None


def watch_worker_end() -> WorkerEnd:
    ending = WorkerEnd()

    def on_shutting_down(**kwargs: Any) -> None:
        ending.requested.set()

    def on_shutdown(sender: Any = None, **kwargs: Any) -> None:
        code = getattr(sender, "exitcode", None)
        if isinstance(code, int):
            ending.code = code

    signals.worker_shutting_down.connect(on_shutting_down, weak=False)
    signals.worker_shutdown.connect(on_shutdown, weak=False)
    return ending


def restart_worker(code: int, ran_seconds: float = 0.0) -> NoReturn:
    """Start this worker afresh, in the same process (same pid, no orphan).

    Celery gives up ("Unrecoverable error") on some races of kombu's Redis transport when the
    connection drops; a worker must outlive a Redis outage, so it starts again. Failures in
    a row back off, up to 30 s between tries; a worker that ran for a minute first starts
    again after 1 s.
    """
    restarts = (
        int(os.environ.get("CASEFETCH_WORKER_RESTARTS", "0")) if ran_seconds < STEADY_SECONDS else 0
    )
    delay = min(30.0, 2.0 ** min(restarts, 5))
    logging.getLogger("casefetch.worker").error(
        "the Celery worker stopped on an error (exit %s); starting it again in %.0f s", code, delay
    )
    time.sleep(delay)
    os.environ["CASEFETCH_WORKER_RESTARTS"] = str(restarts + 1)
    os.execv(sys.executable, [sys.executable, "-m", "casefetch_tools", *sys.argv[1:]])
