"""The fixtures: real services for the tests (a private redis-server, a Celery worker process,
the receiver, a misbehaving file server), nothing mocked. What they are built from lives in
modules named for it: tests/processes.py, tests/archive_view.py, tests/waiting.py,
tests/credentials.py."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from casefetch_tools.redis_server import RedisServer, free_port
from tests import databases
from tests.archive_view import Archive
from tests.fileserver import FileServer
from tests.processes import ReceiverProcess, WorkerProcess, receiver_env, worker_env
from tests.samples import close_built
from tests.sentinels import SentinelGroup, replicate
from worker.storage import LocalStorage


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendfsync="everysec").start()
    yield server
    server.stop()


#: The session's worker, while it runs: database 0 is its (see tests/databases.py).
SESSION_WORKER = pytest.StashKey[WorkerProcess]()


@pytest.fixture(autouse=True)
def clean_redis(request: pytest.FixtureRequest) -> None:
    """Before each test that uses Redis, empty what earlier tests left (tests/databases.py).
    Fixtures of wider scope are set up first, so a session worker this test starts is
    already known as running here."""
    if "redis_server" not in request.fixturenames:
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    worker = request.config.stash.get(SESSION_WORKER, None)
    databases.clean(server, pipeline_running=worker is not None and worker.running())


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A primary, a replica and three sentinels of this test's own (it may kill them)."""
    group = SentinelGroup(tmp_path / "sentinel")
    try:
        yield group.start()
    finally:
        group.stop()


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and its replica of this test's own (no sentinels; it may stop them)."""
    primary = RedisServer(tmp_path / "primary", appendfsync="everysec").start()
    replica = RedisServer(tmp_path / "replica", appendfsync="everysec")
    try:
        replicate(replica.start(), primary)
        yield primary, replica
    finally:
        for server in (replica, primary):
            if server.process is not None:  # a test may have paused it
                server.process.send_signal(signal.SIGCONT)
            server.kill()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def file_server() -> Iterator[FileServer]:
    server = FileServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def archive_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("archive")


@pytest.fixture(scope="session")
def worker(
    redis_server: RedisServer,
    archive_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[WorkerProcess]:
    log_path = tmp_path_factory.mktemp("logs") / "worker.log"
    env = worker_env(redis_server.url, archive_dir, WORKER_METRICS_PORT=str(free_port()))
    process = WorkerProcess(env, log_path).start()
    request.config.stash[SESSION_WORKER] = process
    yield process
    process.stop()
    del request.config.stash[SESSION_WORKER]


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    """A local archive of the test's own."""
    return LocalStorage(tmp_path / "archive")


@pytest.fixture
def archive(archive_dir: Path) -> Archive:
    return Archive(archive_dir)


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique names per test, so tests sharing the session archive never collide."""
    counter = iter(range(1_000_000))
    stamp = f"{time.time_ns():x}"[-8:]

    def make(prefix: str = "CF") -> str:
        return f"{prefix}-{stamp}-{next(counter)}"

    return make


@pytest.fixture(scope="session")
def receiver(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReceiverProcess]:
    log_path = tmp_path_factory.mktemp("logs") / "receiver.log"
    process = ReceiverProcess(receiver_env(redis_server.url), log_path).start()
    yield process
    process.stop()


# -- summary lines (the fault-injection suite reports its figures at the end of the run) ----

SUMMARY = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SUMMARY] = []


@pytest.fixture
def report_line(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Add a line to the run's closing summary."""
    return request.config.stash[SUMMARY].append


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(SUMMARY, [])
    if lines:
        terminalreporter.section("fault-injection summary")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _close_what_tests_built() -> Iterator[None]:
    """Fetchers keep connections open for their next file: close those a test built."""
    yield
    close_built()
