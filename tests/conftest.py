"""Real services for the tests: a private redis-server, a Celery worker process, the receiver,
and a misbehaving file server. Nothing here is mocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from casefetch_tools.polling import poll
from casefetch_tools.redis_server import RedisServer
from tests.fileserver import FileServer
from tests.samples import close_built

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-bearer-token"
HMAC_KEY, HMAC_SECRET = "test-api-key", "test-api-secret"
BASIC_USER, BASIC_PASSWORD = "platform", "p4ss:word"


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05,
             message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    value = poll(predicate, timeout, interval)
    if not value:
        raise AssertionError(f"timed out after {timeout}s waiting for {message}")
    return value


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendfsync="everysec").start()
    yield server
    server.stop()


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


def worker_env(redis_url: str, archive: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBHOOK_", "DOWNLOAD_"))}
    env.update({
        "REDIS_URL": redis_url,
        "ARCHIVE_DIR": str(archive),
        "STORAGE_BACKEND": "local",
        "DOWNLOAD_ALLOW_PRIVATE_NETWORKS": "true",
        "DOWNLOAD_MAX_ATTEMPTS": "3",
        "DOWNLOAD_TIMEOUT_SECONDS": "3",
        "DOWNLOAD_BACKOFF_BASE_SECONDS": "0.05",
        "DOWNLOAD_BACKOFF_MAX_SECONDS": "0.5",
        "PYTHONUNBUFFERED": "1",
        "WORKER_METRICS_PORT": "0",
    })
    env.update(extra)
    return env


class WorkerProcess:
    """``casefetch worker`` as a child process, its output in a log file."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.env = env
        self.log_path = log_path
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "casefetch_tools", "worker", "--concurrency", "8", *self.args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited:\n{self.log_path.read_text()[-3000:]}")
            return b" ready." in self.log_path.read_bytes()[offset:]

        wait_for(ready, timeout=30, message="the worker to be ready")
        return self

    def stop(self, sig: int | None = None) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if sig is None:
            self.process.terminate()
        else:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def state(self) -> str:
        """``running``, or how the process ended (for a failing test's explanation)."""
        if self.process is None:
            return "not started"
        code = self.process.poll()
        return "running" if code is None else f"exited with {code}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def worker(redis_server: RedisServer, archive_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    from casefetch_tools.redis_server import free_port

    log_path = tmp_path_factory.mktemp("logs") / "worker.log"
    env = worker_env(redis_server.url, archive_dir, WORKER_METRICS_PORT=str(free_port()))
    process = WorkerProcess(env, log_path).start()
    yield process
    process.stop()


class Archive:
    """Reading the local archive the way an operator would."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def case(self, cf_ref: str) -> Path:
        from worker.archive import case_dir

        return self.root / case_dir(cf_ref)

    def manifest(self, cf_ref: str) -> dict[str, Any] | None:
        path = self.case(cf_ref) / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else None

    def settled(self, cf_ref: str, timeout: float = 30.0) -> dict[str, Any]:
        """The manifest once the case is no longer pending."""
        def done() -> dict[str, Any] | None:
            manifest = self.manifest(cf_ref)
            return manifest if manifest and manifest["status"] != "pending" else None

        return wait_for(done, timeout=timeout, message=f"case {cf_ref} to settle")  # type: ignore[no-any-return]

    def quarantined(self, delivery_id: str, timeout: float = 20.0) -> dict[str, Any]:
        path = self.root / "quarantine" / f"{delivery_id}.json"
        wait_for(path.exists, timeout=timeout, message=f"quarantine of {delivery_id}")
        return json.loads(path.read_text())  # type: ignore[no-any-return]


@pytest.fixture
def storage(tmp_path: Path) -> Any:
    """A local archive of the test's own."""
    from worker.storage import LocalStorage

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


class ReceiverProcess:
    """``casefetch receiver`` as a child process on a free port."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        from casefetch_tools.redis_server import free_port

        self.port = free_port()
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._http: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ReceiverProcess:
        import urllib3

        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "casefetch_tools", "receiver", "--host", "127.0.0.1", "--port",
             str(self.port)], env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()

        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"receiver exited:\n{self.log_path.read_text()}")
            try:
                return urllib3.request("GET", f"{self.url}/healthz", retries=False,
                                       timeout=1).status == 200
            except urllib3.exceptions.HTTPError:
                return False

        wait_for(up, timeout=20, message="the receiver to serve")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        import urllib3

        headers = headers or {"Authorization": f"Bearer {TOKEN}",
                              "Content-Type": "application/json"}
        if self._http is None:  # one pool, as many connections as the tests' threads
            self._http = urllib3.PoolManager(maxsize=16)
        response = self._http.request("POST", f"{self.url}/webhooks", body=body,
                                      headers=headers, retries=False, timeout=10)
        try:
            return response.status, json.loads(response.data)
        except ValueError:
            return response.status, response.data


def receiver_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOK_")}
    env.update({"REDIS_URL": redis_url, "WEBHOOK_BEARER_TOKENS": TOKEN,
                "WEBHOOK_HMAC_KEYS": f"{HMAC_KEY}:{HMAC_SECRET}",
                "WEBHOOK_BASIC_USERS": f"{BASIC_USER}:{BASIC_PASSWORD}",
                "RECEIVER_REDIS_TIMEOUT_SECONDS": "1"})
    return env


@pytest.fixture(scope="session")
def receiver(redis_server: RedisServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
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


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
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
