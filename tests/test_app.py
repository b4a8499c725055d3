"""worker.app.build_worker: the one place a worker is assembled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
from celery import signals

from casefetch.redis_target import RedisTarget
from casefetch_tools.redis_server import RedisServer
from worker.app import build_worker
from worker.observe import ObservedFetcher, ObservedStorage
from worker.settings import WorkerSettings
from worker.storage import LocalStorage


class Consumer:
    """What Celery sends worker signals from: the worker, which knows its app."""

    def __init__(self, app: Any) -> None:
        self.app = app


class ClosingFetcher:
    def __init__(self) -> None:
        self.closed = 0

    def fetch_staged(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("nothing is fetched here")

    def close(self) -> None:
        self.closed += 1


def test_collaborators_handed_in_are_used_observed_and_closed_at_shutdown(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_server.db_url(9))
    storage = LocalStorage(tmp_path / "archive")
    fetcher = ClosingFetcher()
    app = build_worker(
        WorkerSettings(redis=RedisTarget(redis_server.db_url(9)), archive_dir=tmp_path),
        redis_client=client,
        storage=storage,
        fetcher=fetcher,
    )
    runtime = app.casefetch.runtime
    assert runtime.redis is client
    # The metrics are wrapped around them when they are put together, never patched in.
    assert isinstance(runtime.pipeline.storage, ObservedStorage)
    assert runtime.pipeline.storage.inner is storage
    assert isinstance(runtime.pipeline.fetcher, ObservedFetcher)
    assert runtime.pipeline.fetcher.inner is fetcher
    assert app.casefetch.runtime is runtime  # built once per process

    signals.worker_shutdown.send(sender=Consumer(object()))  # another app's
    assert fetcher.closed == 0
    signals.worker_shutdown.send(sender=Consumer(app))
    assert fetcher.closed == 1
    assert app.casefetch.runtime is not runtime  # a new one, were the app to go on
    app.casefetch.close()
