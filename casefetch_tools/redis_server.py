"""A private redis-server, for ``casefetch run`` on a bare machine and for the tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from casefetch.errors import CasefetchError
from casefetch_tools.polling import poll


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """A redis-server child process with its data in ``directory``.

    Durable like the deployment: append-only file on, fsync every write, no eviction.
    """

    def __init__(
        self, directory: Path, port: int | None = None, appendfsync: str = "always"
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.db_url(0)

    def db_url(self, db: int) -> str:
        """The URL of database ``db`` (tests keep their own databases apart this way)."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise CasefetchError("redis-server is not on PATH (apt-get install redis-server)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                self.appendfsync,
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--daemonize",
                "no",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        process = self.process

        def up_or_dead() -> bool:
            return process.poll() is not None or answers("127.0.0.1", self.port)

        if not poll(up_or_dead, timeout) or process.poll() is not None:
            self.stop()
            raise CasefetchError(
                f"redis-server did not start on port {self.port}; see "
                f"{self.directory / 'redis.log'}"
            )
        return self

    def kill(self) -> None:
        """Stop at once, as a crash would (SIGKILL): only what was fsynced survives."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
