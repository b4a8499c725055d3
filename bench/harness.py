"""What every benchmark needs: child processes that always die, scratch space, measurements."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import urllib3

from casefetch_tools.polling import poll
from casefetch_tools.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
HMAC_KEY, HMAC_SECRET = "bench-api-key", "bench-api-secret"


class BenchError(Exception):
    """A benchmark could not run (a service did not start, a case never settled)."""


@dataclass
class Result:
    """One row of the table."""

    name: str
    ours: float
    comparison: float | None
    unit: str
    #: ours / comparison (or a benchmark-specific ratio), what the target is about.
    ratio: float | None
    target: str
    passed: bool
    notes: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    value = poll(predicate, timeout, interval)
    if not value:
        raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
    return value


def http_ok(url: str) -> bool:
    try:
        return urllib3.request("GET", url, retries=False, timeout=1).status == 200
    except urllib3.exceptions.HTTPError:
        return False


class Processes:
    """Children started in their own session, so stopping one stops its whole tree."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[subprocess.Popen[bytes]] = []
        #: The latest child started under each name.
        self.named: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, pipes: bool = False
    ) -> subprocess.Popen[bytes]:
        """``pipes``: the child's stdin and stdout are pipes to this process (its stderr
        still goes to the log)."""
        with (self.logs / f"{name}.log").open("ab") as log:
            child = subprocess.Popen(
                argv,
                env=env,
                stdout=subprocess.PIPE if pipes else log,
                stderr=log if pipes else subprocess.STDOUT,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,
            )
        self.children.append(child)
        self.named[name] = child
        return child

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, child: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        # Whatever the leader left behind in its session goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)


class Bench:
    """Scratch directory, one Redis, and the processes of one ``python -m bench`` run."""

    def __init__(self, scratch_parent: Path | None = None, keep: bool = False) -> None:
        base = str(scratch_parent) if scratch_parent else None
        self.dir = Path(tempfile.mkdtemp(prefix="casefetch-bench-", dir=base))
        self.keep = keep
        (self.dir / "logs").mkdir()
        self.procs = Processes(self.dir / "logs")
        self.redis: RedisServer | None = None
        self.python = sys.executable

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.procs.stop_all()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
            os.sync()  # the deletions reach the disk now, not during what runs next

    def start_redis(self) -> RedisServer:
        # AOF on, fsync once a second: the same Redis, the same durability, for every variant.
        self.redis = RedisServer(self.dir / "redis", appendfsync="everysec").start()
        return self.redis

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    def path(self, name: str) -> Path:
        path = self.dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("WEBHOOK_", "DOWNLOAD_", "RECEIVER_", "CELERY_"))
        }
        env.update(
            {
                "REDIS_URL": self.redis_url,
                "WEBHOOK_HMAC_KEYS": f"{HMAC_KEY}:{HMAC_SECRET}",
                "DOWNLOAD_ALLOW_PRIVATE_NETWORKS": "true",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra)
        return env

    # -- services ---------------------------------------------------------------------------

    def start_receiver(
        self, name: str = "receiver", argv: list[str] | None = None, **env: str
    ) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        argv = argv or [self.python, "-m", "casefetch_tools", "receiver"]
        child = self.procs.start(
            name, [*argv, "--host", "127.0.0.1", "--port", str(port)], self.env(**env)
        )
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if child.poll() is not None:
                raise BenchError(f"{name} exited:\n{self.procs.log(name)[-2000:]}")
            return http_ok(f"{url}/healthz")

        wait_for(up, 30, f"{name} to serve")
        return child, url

    def start_worker(
        self, name: str, archive: Path, concurrency: int | None = None, **env: str
    ) -> subprocess.Popen[bytes]:
        """``casefetch worker`` as deployed (INFO logs, default pool), once it consumes."""
        argv = [self.python, "-m", "casefetch_tools", "worker"]
        if concurrency:
            argv += ["--concurrency", str(concurrency)]
        child = self.procs.start(name, argv, self.env(ARCHIVE_DIR=str(archive), **env))

        def ready() -> bool:
            if child.poll() is not None:
                raise BenchError(f"{name} exited:\n{self.procs.log(name)[-2000:]}")
            return " ready." in self.procs.log(name)

        wait_for(ready, 40, f"{name} to be ready", interval=0.1)
        return child

    def start_fileserver(self) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        child = self.procs.start(
            "fileserver", [self.python, "-m", "bench.fileserver", "--port", str(port)], self.env()
        )
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_ok(f"{url}/ok"), 20, "the file server")
        return child, url


def _process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (none once it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu(pid: int) -> float:
    """CPU seconds (user and system) of a process and all its descendants so far."""
    total = 0.0
    for proc in _process_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    total = 0
    for proc in _process_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_info().rss
    return total


class PeakRss:
    """Samples a process tree's RSS in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self.samples += 1
            self._stop.wait(self.interval)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
