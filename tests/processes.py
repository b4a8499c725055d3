"""``casefetch worker`` and ``casefetch receiver`` as child processes, and the environments
the tests start them with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import urllib3

from casefetch_tools.redis_server import free_port
from tests.credentials import BASIC_PASSWORD, BASIC_USER, HMAC_KEY, HMAC_SECRET, TOKEN
from tests.paths import ROOT
from tests.waiting import wait_for

#: How the tests start casefetch: this interpreter, on the checkout's sources.
CASEFETCH = (sys.executable, "-m", "casefetch_tools")


def worker_env(redis_url: str, archive: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBHOOK_", "DOWNLOAD_"))}
    env.update(
        {
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
        }
    )
    env.update(extra)
    return env


def receiver_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOK_")}
    env.update(
        {
            "REDIS_URL": redis_url,
            "WEBHOOK_BEARER_TOKENS": TOKEN,
            "WEBHOOK_HMAC_KEYS": f"{HMAC_KEY}:{HMAC_SECRET}",
            "WEBHOOK_BASIC_USERS": f"{BASIC_USER}:{BASIC_PASSWORD}",
            "RECEIVER_REDIS_TIMEOUT_SECONDS": "1",
        }
    )
    return env


class WorkerProcess:
    """``casefetch worker`` as a child process, its output in a log file."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        *args: str,
        command: Sequence[str] = CASEFETCH,
        cwd: Path = ROOT,
        concurrency: int = 8,
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.args = args
        self.command, self.cwd, self.concurrency = command, cwd, concurrency
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*self.command, "worker", "--concurrency", str(self.concurrency), *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
        )
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


class ReceiverProcess:
    """``casefetch receiver`` as a child process on a free port."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        command: Sequence[str] = CASEFETCH,
        cwd: Path = ROOT,
    ) -> None:
        self.port = free_port()
        self.env = env
        self.log_path = log_path
        self.command, self.cwd = command, cwd
        self.process: subprocess.Popen[bytes] | None = None
        self._http: urllib3.PoolManager | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ReceiverProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*self.command, "receiver", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
        )
        log.close()

        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"receiver exited:\n{self.log_path.read_text()}")
            try:
                return (
                    urllib3.request("GET", f"{self.url}/healthz", retries=False, timeout=1).status
                    == 200
                )
            except urllib3.exceptions.HTTPError:
                return False

        wait_for(up, timeout=20, message="the receiver to serve")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        headers = headers or {
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/json",
        }
        if self._http is None:  # one pool, as many connections as the tests' threads
            self._http = urllib3.PoolManager(maxsize=16)
        response = self._http.request(
            "POST", f"{self.url}/webhooks", body=body, headers=headers, retries=False, timeout=10
        )
        try:
            return response.status, json.loads(response.data)
        except ValueError:
            return response.status, response.data
