"""`casefetch run`: the whole pipeline on one machine, a receiver and a worker as child
processes, with a private redis-server when no Redis answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from casefetch.config import redact_url
from casefetch.errors import CasefetchError
from casefetch_tools.exits import fail
from casefetch_tools.redis_server import RedisServer, answers
from receiver.settings import read_port
from worker.settings import WorkerSettings


@click.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--concurrency", default=None, type=click.IntRange(1))
def run(host: str, port: int, concurrency: int | None) -> None:
    """Run the whole pipeline on this machine: receiver + worker (+ a private Redis)."""
    env = dict(os.environ)
    try:  # the settings the worker will read, for what is shown below: wrong ones stop here
        settings = WorkerSettings.from_env(env)
        receiver_metrics = read_port(env, "RECEIVER_METRICS_PORT") or port
    except CasefetchError as exc:
        fail(str(exc))
    try:
        env["REDIS_URL"], redis_server = choose_redis(env)
    except CasefetchError as exc:
        fail(str(exc))
    if redis_server is not None:
        click.echo(
            f"started a private redis-server at {redact_url(redis_server.url)} "
            f"(data in {redis_server.directory})"
        )
    commands = [
        [sys.executable, "-m", "casefetch_tools", "receiver", "--host", host, "--port", str(port)],
        [sys.executable, "-m", "casefetch_tools", "worker"]
        + (["--concurrency", str(concurrency)] if concurrency else []),
    ]
    children = [subprocess.Popen(cmd, env=env) for cmd in commands]
    shown = "127.0.0.1" if host == "0.0.0.0" else host
    archive = (
        f"s3://{settings.s3_bucket}/{settings.s3_prefix}"
        if settings.storage_backend == "s3"
        else str(settings.archive_dir.resolve())
    )
    click.echo(
        f"casefetch is running: POST webhooks to http://{shown}:{port}/webhooks; "
        f"files land in {archive}. Ctrl-C stops."
    )
    click.echo(
        f"metrics: http://{shown}:{receiver_metrics}/metrics (receiver)"
        + (
            f", http://{shown}:{settings.metrics_port}/metrics (worker)"
            if settings.metrics_port
            else ""
        )
    )
    code = _supervise(children)
    if redis_server is not None:
        redis_server.stop()
    sys.exit(code)


def choose_redis(
    env: dict[str, str], default_port: int = 6379, data_dir: Path = Path(".run/redis")
) -> tuple[str, RedisServer | None]:
    """REDIS_URL if set; else a Redis answering on localhost; else a private redis-server."""
    if env.get("REDIS_URL"):
        return env["REDIS_URL"], None
    if answers("127.0.0.1", default_port):
        return f"redis://localhost:{default_port}/0", None
    server = RedisServer(data_dir).start()
    return server.url, server


def _describe(child: subprocess.Popen[bytes]) -> str:
    args = child.args
    return " ".join(str(a) for a in args[2:4]) if isinstance(args, list) else str(args)


def _supervise(children: list[subprocess.Popen[bytes]]) -> int:
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not stopping:
        for child in children:
            if child.poll() is not None:
                code = child.returncode or 1
                click.echo(
                    f"casefetch: {_describe(child)} exited ({child.returncode}); stopping", err=True
                )
                stopping = True
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
    return code
