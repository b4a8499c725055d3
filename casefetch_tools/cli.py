"""The ``casefetch`` command."""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import click
import urllib3
from aiohttp import web
from celery import signals

from casefetch import config, logs
from casefetch.config import redact_url
from casefetch.constants import ALL_QUEUES
from casefetch.errors import CasefetchError
from casefetch_tools import archive as archive_commands
from casefetch_tools import demo as platform
from casefetch_tools import quarantine as quarantine_commands
from casefetch_tools.redis_server import RedisServer, answers
from casefetch_tools.sender import auth_headers
from casefetch_tools.terminal import fail
from receiver import ReceiverSettings, create_app
from receiver.app import server_options
from receiver.settings import read_port
from worker.app import build_worker, make_storage, worker_argv
from worker.settings import WorkerSettings


def _setup_logging(level: str = "INFO") -> None:
    logs.setup(level.upper())


@click.group()
@click.version_option(package_name="casefetch")
def main() -> None:
    """casefetch: receive certificate cases by webhook and archive their files, verified."""


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
def receiver(host: str, port: int) -> None:
    """Serve the webhook receiver."""
    try:
        settings = ReceiverSettings.from_env()
    except CasefetchError as exc:
        fail(str(exc))
    _setup_logging()
    logging.getLogger("casefetch.receiver").info(
        "receiver listening on http://%s:%d/webhooks (schemes: %s)", host, port,
        ", ".join(s.value for s in settings.credentials.schemes))
    app = create_app(settings, host=host)
    # What is loaded by now lives as long as the process: out of the collector's sight, a
    # full collection no longer walks it in the middle of a request (the receiver's p99).
    gc.collect()
    gc.freeze()
    try:
        web.run_app(app, host=host, port=port, access_log=None,
                    print=None, handle_signals=True, **server_options(settings))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}")
    except CasefetchError as exc:  # e.g. the metrics port is taken
        fail(str(exc))


@main.command()
@click.option("--queues", default=None, help="Comma-separated queues (default: all).")
@click.option("--concurrency", default=None, type=click.IntRange(1), help="Parallel tasks.")
@click.option("--loglevel", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                                case_sensitive=False))
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
    _setup_logging(loglevel)
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
    restarts = (int(os.environ.get("CASEFETCH_WORKER_RESTARTS", "0"))
                if ran_seconds < STEADY_SECONDS else 0)
    delay = min(30.0, 2.0 ** min(restarts, 5))
    logging.getLogger("casefetch.worker").error(
        "the Celery worker stopped on an error (exit %s); starting it again in %.0f s",
        code, delay)
    time.sleep(delay)
    os.environ["CASEFETCH_WORKER_RESTARTS"] = str(restarts + 1)
    os.execv(sys.executable, [sys.executable, "-m", "casefetch_tools", *sys.argv[1:]])


@main.command()
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
        click.echo(f"started a private redis-server at {redact_url(redis_server.url)} "
                   f"(data in {redis_server.directory})")
    commands = [[sys.executable, "-m", "casefetch_tools", "receiver", "--host", host, "--port",
                 str(port)],
                [sys.executable, "-m", "casefetch_tools", "worker"]
                + (["--concurrency", str(concurrency)] if concurrency else [])]
    children = [subprocess.Popen(cmd, env=env) for cmd in commands]
    shown = "127.0.0.1" if host == "0.0.0.0" else host
    archive = (f"s3://{settings.s3_bucket}/{settings.s3_prefix}"
               if settings.storage_backend == "s3" else str(settings.archive_dir.resolve()))
    click.echo(f"casefetch is running: POST webhooks to http://{shown}:{port}/webhooks; "
               f"files land in {archive}. Ctrl-C stops.")
    click.echo(f"metrics: http://{shown}:{receiver_metrics}/metrics (receiver)"
               + (f", http://{shown}:{settings.metrics_port}/metrics (worker)"
                  if settings.metrics_port else ""))
    code = _supervise(children)
    if redis_server is not None:
        redis_server.stop()
    sys.exit(code)


def choose_redis(env: dict[str, str], default_port: int = 6379,
                 data_dir: Path = Path(".run/redis")) -> tuple[str, RedisServer | None]:
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


@main.command()
@click.option("--receiver", "receiver_url", envvar="DEMO_RECEIVER_URL", show_default=True,
              default="http://127.0.0.1:8080/webhooks", help="Where to POST the webhooks.")
@click.option("--host", envvar="DEMO_HOST", default="127.0.0.1", show_default=True,
              help="Address the file server listens on.")
@click.option("--port", envvar="DEMO_PORT", default=8000, show_default=True, type=int)
@click.option("--public-url", envvar="DEMO_PUBLIC_URL", default=None,
              help="Base URL the workers fetch the files from [default: http://HOST:PORT].")
@click.option("--cases", envvar="DEMO_CASES", default=3, show_default=True,
              type=click.IntRange(0), help="How many cases to announce.")
@click.option("--interval", envvar="DEMO_INTERVAL_SECONDS", default=2.0, show_default=True,
              type=click.FloatRange(0), help="Seconds between two cases.")
@click.option("--bearer", metavar="TOKEN", help="Authenticate with a Bearer token.")
@click.option("--hmac", "hmac_pair", metavar="KEY:SECRET", help="Sign with HMAC-SHA256.")
@click.option("--basic", metavar="USER:PASS", help="Authenticate with HTTP Basic.")
def demo(receiver_url: str, host: str, port: int, public_url: str | None, cases: int,
         interval: float, bearer: str | None, hmac_pair: str | None,
         basic: str | None) -> None:
    """Play the certificate platform: serve sample files, send signed webhooks for them.

    Without --bearer/--hmac/--basic it uses the receiver's own settings (WEBHOOK_HMAC_KEYS,
    WEBHOOK_BEARER_TOKENS or WEBHOOK_BASIC_USERS).
    """
    try:
        if sum(x is not None for x in (bearer, hmac_pair, basic)) > 1:
            fail("give at most one of --bearer, --hmac or --basic")
        credentials = (platform.Credentials(bearer, hmac_pair, basic)
                       if bearer or hmac_pair or basic
                       else platform.Credentials.from_env(config.environ()))
        platform.run(receiver_url, credentials, host=host, port=port, public_url=public_url,
                     cases=cases, interval=interval, echo=click.echo)
    except CasefetchError as exc:
        fail(str(exc), code=1)


main.add_command(archive_commands.archive)
main.add_command(quarantine_commands.quarantine)
