"""The worker in-process, on the path production runs: the ingest task's ``run_ingest``, the
download task's ``fetch_batch`` and the sweep, over a real Redis (the queues as kombu keeps
them) and a real storage.

A message whose task raised, postponed its work or died is handed back, as kombu does after
a retry or a worker's death, so a test sees every accepted delivery through to its end in
milliseconds. :class:`Faults`, with :class:`FaultyStorage` and :class:`FaultyRedis`, fails the
Nth storage write or Redis round trip: with an error the worker handles (a full disk, an S3
5xx, a Redis blip), or by killing the worker just after the step took effect.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import redis

from casefetch import logs
from casefetch.constants import DOWNLOAD_QUEUE, INGEST_QUEUE, KEY_PREFIX
from casefetch.protocol import Delivery, make_delivery
from tests.samples import closed_after_test
from worker.batch import fetch_batch
from worker.bookkeeping import Bookkeeping, Busy
from worker.download import Fetcher
from worker.errors import INFRA_ERRORS, StorageError
from worker.runtime import Runtime
from worker.settings import DownloadSettings, WorkerSettings
from worker.storage import LocalStorage, Staged, Storage
from worker.sweep import sweep_once
from worker.tasks import run_ingest

#: The sweep as the harness runs it once the queues are empty: every case and delivery left
#: is taken for stuck or lost at once (the time a real sweeper would wait, passed).
SWEEP_NOW = WorkerSettings(stuck_after_seconds=0, visibility_timeout_seconds=0)


class Crash(BaseException):
    """The worker process dies here: nothing in the worker catches it."""


@dataclass
class Faults:
    """Fails step number ``at`` (from 1) of those counted while ``armed``: with ``mode``
    "error" the step raises before it is done; with "crash" the worker dies right after it
    took effect. ``fired`` names the step once it has failed."""

    at: int = 0
    mode: str = "error"
    armed: bool = False
    count: int = 0
    fired: str | None = None
    names: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextlib.contextmanager
    def step(self, name: str, error: BaseException) -> Iterator[None]:
        hit = False
        if self.armed and not threading.current_thread().name.startswith("casefetch-locks"):
            with self.lock:
                self.count += 1
                self.names.append(name)
                hit = self.count == self.at
                if hit:
                    self.fired = f"{self.mode} at step {self.count}: {name}"
        if hit and self.mode == "error":
            raise error
        yield
        if hit:
            raise Crash(name)


class FaultyRedis(redis.Redis):
    """A Redis client whose round trips (a command, a script, a pipeline) are steps of
    :attr:`faults`."""

    faults: Faults = Faults()

    def execute_command(self, *args: Any, **options: Any) -> Any:
        name = f"redis {args[0]}"
        with self.faults.step(name, redis.ConnectionError(f"injected: {name}")):
            # redis-py leaves execute_command unannotated.
            return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        faults = self.faults

        class Pipeline(redis.client.Pipeline):
            def execute(self, raise_on_error: bool = True) -> Any:
                names = ",".join(str(c[0][0]) for c in self.command_stack)
                with faults.step(
                    f"redis pipeline {names}", redis.ConnectionError("injected: pipeline")
                ):
                    return super().execute(raise_on_error)

        return Pipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


class FaultyStorage(Storage):
    """A storage whose writes (whole objects, staged objects begun and put in place, folder
    syncs, moves, deletes) are steps of ``faults``."""

    def __init__(self, inner: Storage, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults

    def _step(self, action: str, key: str) -> contextlib.AbstractContextManager[None]:
        name = f"storage {action} {key}"
        return self.faults.step(name, StorageError(f"injected: {name}", key))

    def write_bytes(self, key: str, data: bytes, sync_folder: bool = True) -> None:
        with self._step("write", key):
            self.inner.write_bytes(key, data, sync_folder)

    @contextlib.contextmanager
    def stage(self, key: str, cache: bool = True, owner: str | None = None) -> Iterator[Staged]:
        with self._step("stage", key), self.inner.stage(key, cache, owner) as staged:
            yield _FaultyStaged(staged, self)

    def sync_folders(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        with self._step("sync", ",".join(sorted({k.rsplit("/", 1)[0] for k in keys}))):
            self.inner.sync_folders(keys)

    def move(self, source: str, destination: str) -> None:
        with self._step("move", f"{source}>{destination}"):
            self.inner.move(source, destination)

    def delete(self, key: str) -> None:
        with self._step("delete", key):
            self.inner.delete(key)

    def read_bytes(self, key: str) -> bytes:
        return self.inner.read_bytes(key)

    def open_reader(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        return self.inner.open_reader(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str) -> Iterator[str]:
        return self.inner.list(prefix)

    def describe(self) -> str:
        return self.inner.describe()

    def remove_stale_temp(
        self, older_than_seconds: float, live_owners: Collection[str] = frozenset()
    ) -> int:
        return self.inner.remove_stale_temp(older_than_seconds, live_owners)


class _FaultyStaged:
    def __init__(self, inner: Staged, storage: FaultyStorage) -> None:
        self.inner = inner
        self.key = inner.key
        self.storage = storage

    def write(self, data: bytes | memoryview, /) -> object:
        return self.inner.write(data)

    def commit(self, sync_folder: bool = True) -> None:
        with self.storage._step("commit", self.key):
            self.inner.commit(sync_folder)

    def discard(self) -> None:
        self.inner.discard()


@dataclass
class Harness:
    storage: Storage
    #: What the worker talks to (a FaultyRedis to inject faults).
    client: redis.Redis
    #: The test's own connection to the same database: the receiver's side, and kombu's.
    broker: redis.Redis
    settings: DownloadSettings = field(
        default_factory=lambda: DownloadSettings(
            allow_private_networks=True,
            allowed_hosts=("127.0.0.1",),
            max_attempts=1,
            timeout_seconds=2.0,
            max_bytes=1024 * 1024,
        )
    )
    #: Whether the worker consumes downloads too (then ingest fetches a case's first batch).
    fetch_first: bool = True
    #: REDIS_MIN_REPLICAS_ACK, as the worker is given it.
    replicas: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)
    deaths: int = 0

    def __post_init__(self) -> None:
        self.runtime = self._start()
        self.receiver = Bookkeeping(self.broker)

    def _start(self) -> Runtime:
        fetcher = closed_after_test(Fetcher(self.settings, sleep=lambda _: None))
        return Runtime(
            self.client,
            self.storage,
            fetcher,
            download_threads=1,
            lock_seconds=60,
            replicas=self.replicas,
        )

    @property
    def pipeline(self) -> Any:
        return self.runtime.pipeline

    def accept(self, body: bytes, delivery_id: str | None = None) -> Delivery:
        """What the receiver does with a request: the delivery in the inbox, its message
        queued."""
        delivery = make_delivery(body, {"Content-Type": "application/json"}, delivery_id)
        self.receiver.enqueue(delivery)
        return delivery

    def deliver(self, body: bytes) -> dict[str, Any]:
        """Accept ``body`` and work it through to its end; return how it ended."""
        delivery = self.accept(body)
        self.run()
        return {
            "deliveryId": delivery["deliveryId"],
            "outcome": self.outcomes.get(delivery["deliveryId"]),
        }

    def run(self, limit: int = 500) -> None:
        """Work every queued message as workers would, each handed back while it must be
        tried again; sweep once the queues are empty; until nothing is left."""
        for _ in range(limit):
            if self.step():
                continue
            try:
                sweep_once(self.runtime, SWEEP_NOW)
            except Crash:
                self._died()
                continue
            except INFRA_ERRORS:
                continue  # the sweeper tries again at its next interval
            if not self.broker.llen(INGEST_QUEUE) and not self.broker.llen(DOWNLOAD_QUEUE):
                return
        raise AssertionError(f"still at work after {limit} steps")

    def step(self) -> bool:
        """Work one queued message (ingest first); False when there was none."""
        queue = INGEST_QUEUE if self.broker.llen(INGEST_QUEUE) else DOWNLOAD_QUEUE
        raw = self.broker.rpop(queue)
        if raw is None:
            return False
        assert isinstance(raw, bytes)  # one entry (no count), undecoded (no decode_responses)
        [argument], _kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
        try:
            if queue == INGEST_QUEUE:
                outcome = run_ingest(self.runtime, argument, self.fetch_first)
                self.outcomes.setdefault(argument["deliveryId"], outcome)
            else:
                _, postponed = fetch_batch(self.runtime, argument)
                if postponed is not None:
                    raise postponed
        except Crash:
            self._died()
            self.broker.rpush(queue, raw)  # unacknowledged: kombu hands it back
        except (Busy, *INFRA_ERRORS):
            # Retried once the locks a failed release left have expired (between messages
            # nothing holds one): a real worker waits out their time to live.
            self._expire_locks()
            self.broker.lpush(queue, raw)
        finally:
            logs.clear()  # as the worker does after every task
        return True

    def _died(self) -> None:
        """The worker process died: its threads stop, its locks expire; another starts."""
        self.deaths += 1
        self.runtime.files.shutdown(wait=True)
        self.runtime.pipeline.books.locks.renewer._held.clear()
        self._expire_locks()
        self.runtime = self._start()

    def _expire_locks(self) -> None:
        for key in self.broker.scan_iter(match=f"{KEY_PREFIX}:lock:*"):
            self.broker.delete(key)

    def close(self) -> None:
        self.runtime.files.shutdown(wait=True)
        self.client.close()
        self.broker.close()

    def quarantine(self, delivery_id: str) -> dict[str, Any] | None:
        key = f"quarantine/{delivery_id}.json"
        return json.loads(self.storage.read_bytes(key)) if self.storage.exists(key) else None

    def manifest(self, case: str) -> dict[str, Any] | None:
        key = f"{case}/manifest.json"
        return json.loads(self.storage.read_bytes(key)) if self.storage.exists(key) else None

    def manifests(self) -> list[dict[str, Any]]:
        return [
            json.loads(self.storage.read_bytes(key))
            for key in self.storage.list("cases/")
            if key.endswith("/manifest.json")
        ]


def harness(
    root: Path,
    redis_url: str,
    storage: Storage | None = None,
    db: int = 6,
    faults: Faults | None = None,
    replicas: int = 0,
) -> Harness:
    """A harness on ``root``, its bookkeeping in a Redis database the session worker ignores
    (flushed: an earlier test's cases must not leak into this one). With ``faults``, its
    storage and Redis fail where they say; with ``replicas``, its writes that must reach
    replicas wait for that many."""
    url = f"{redis_url.rsplit('/', 1)[0]}/{db}"
    broker = redis.Redis.from_url(url)
    broker.flushdb()
    storage = storage or LocalStorage(root)
    if faults is None:
        return Harness(storage, redis.Redis.from_url(url), broker, replicas=replicas)
    client = FaultyRedis.from_url(url)
    assert isinstance(client, FaultyRedis)  # from_url builds the class it is called on
    client.faults = faults
    return Harness(FaultyStorage(storage, faults), client, broker, replicas=replicas)
