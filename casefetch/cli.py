"""The ``casefetch`` command."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from casefetch.errors import CasefetchError

if TYPE_CHECKING:
    from casefetch.redis_server import RedisServer


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"casefetch: {message}", err=True)
    sys.exit(code)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.group()
@click.version_option(package_name="casefetch")
def main() -> None:
    """casefetch: receive certificate cases by webhook and archive their files, verified."""


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
def receiver(host: str, port: int) -> None:
    """Serve the webhook receiver."""
    from aiohttp import web

    from receiver import ReceiverSettings, create_app
    from receiver.app import server_options

    try:
        settings = ReceiverSettings.from_env()
    except CasefetchError as exc:
        fail(str(exc))
    _setup_logging()
    logging.getLogger("casefetch.receiver").info(
        "receiver listening on http://%s:%d/webhooks (schemes: %s)", host, port,
        ", ".join(s.value for s in settings.credentials.schemes))
    try:
        web.run_app(create_app(settings), host=host, port=port, access_log=None,
                    print=None, handle_signals=True, **server_options(settings))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}")


@main.command()
@click.option("--queues", default=None, help="Comma-separated queues (default: all).")
@click.option("--concurrency", default=None, type=click.IntRange(1), help="Parallel tasks.")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(queues: str | None, concurrency: int | None, loglevel: str) -> None:
    """Run a Celery worker."""
    from casefetch.constants import ALL_QUEUES
    from worker.celery_app import create_celery_app, install_sweeper, worker_argv
    from worker.settings import WorkerSettings

    chosen = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    unknown = set(chosen or []) - set(ALL_QUEUES)
    if unknown:
        fail(f"unknown queue(s) {', '.join(sorted(unknown))}; known: {', '.join(ALL_QUEUES)}")
    try:
        settings = WorkerSettings.from_env()
    except CasefetchError as exc:
        fail(str(exc))
    _setup_logging()
    app = create_celery_app(settings)
    install_sweeper(app)
    app.worker_main(worker_argv(chosen, concurrency, loglevel))


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--concurrency", default=None, type=click.IntRange(1))
def run(host: str, port: int, concurrency: int | None) -> None:
    """Run the whole pipeline on this machine: receiver + worker (+ a private Redis)."""
    env = dict(os.environ)
    try:
        env["REDIS_URL"], redis_server = choose_redis(env)
    except CasefetchError as exc:
        fail(str(exc))
    if redis_server is not None:
        click.echo(f"started a private redis-server at {redis_server.url} "
                   f"(data in {redis_server.directory})")
    archive = env.get("ARCHIVE_DIR", "./archive")
    commands = [[sys.executable, "-m", "casefetch", "receiver", "--host", host, "--port",
                 str(port)],
                [sys.executable, "-m", "casefetch", "worker"]
                + (["--concurrency", str(concurrency)] if concurrency else [])]
    children = [subprocess.Popen(cmd, env=env) for cmd in commands]
    shown = "127.0.0.1" if host == "0.0.0.0" else host
    click.echo(f"casefetch is running: POST webhooks to http://{shown}:{port}/webhooks; "
               f"files land in {Path(archive).resolve()}. Ctrl-C stops.")
    code = _supervise(children)
    if redis_server is not None:
        redis_server.stop()
    sys.exit(code)


def choose_redis(env: dict[str, str], default_port: int = 6379,
                 data_dir: Path = Path(".run/redis")) -> tuple[str, RedisServer | None]:
    """REDIS_URL if set; else a Redis answering on localhost; else a private redis-server."""
    from casefetch.redis_server import RedisServer, answers

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
                click.echo(f"casefetch: {_describe(child)} exited "
                           f"({child.returncode}); stopping", err=True)
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


@main.command()
@click.argument("url")
@click.argument("payload", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--bearer", metavar="TOKEN", help="Authenticate with a Bearer token.")
@click.option("--hmac", "hmac_pair", metavar="KEY:SECRET", help="Sign with HMAC-SHA256.")
@click.option("--basic", metavar="USER:PASS", help="Authenticate with HTTP Basic.")
@click.option("--timeout", default=30.0, show_default=True)
def send(url: str, payload: Path, bearer: str | None, hmac_pair: str | None,
         basic: str | None, timeout: float) -> None:
    """Send PAYLOAD to URL exactly as the certificate platform would."""
    import urllib3

    from casefetch.sender import auth_headers

    if sum(x is not None for x in (bearer, hmac_pair, basic)) != 1:
        fail("give exactly one of --bearer, --hmac or --basic")
    try:
        body = payload.read_bytes()
    except OSError as exc:
        fail(f"cannot read {payload}: {exc.strerror}")
    try:
        headers = auth_headers(body, bearer=bearer, hmac_pair=hmac_pair, basic=basic)
    except ValueError as exc:
        fail(str(exc))
    headers["Content-Type"] = "application/json"
    try:
        response = urllib3.request("POST", url, body=body, headers=headers, timeout=timeout,
                                   retries=False)
    except urllib3.exceptions.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}", code=1)
    text = response.data.decode("utf-8", "replace")
    click.echo(f"{response.status} {text}")
    if not 200 <= response.status < 300:
        sys.exit(1)
