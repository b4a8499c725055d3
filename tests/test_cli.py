"""The ``casefetch`` command, run as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from casefetch_tools.redis_server import RedisServer, answers, free_port
from casefetch_tools.run_command import choose_redis
from tests import samples
from tests.archive_view import Archive
from tests.credentials import BASIC_PASSWORD, BASIC_USER, HMAC_KEY, HMAC_SECRET, TOKEN
from tests.fileserver import FileServer
from tests.paths import ROOT
from tests.processes import ReceiverProcess, WorkerProcess, receiver_env, worker_env
from tests.waiting import wait_for


def casefetch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "casefetch_tools", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


@pytest.mark.parametrize(
    "auth",
    [
        ["--bearer", TOKEN],
        ["--hmac", f"{HMAC_KEY}:{HMAC_SECRET}"],
        ["--basic", f"{BASIC_USER}:{BASIC_PASSWORD}"],
    ],
    ids=["bearer", "hmac", "basic"],
)
def test_send_signs_as_the_platform_does(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    unique: Callable[[str], str],
    tmp_path: Path,
    auth: list[str],
) -> None:
    cf = unique("CF")
    payload = tmp_path / "case.json"
    payload.write_bytes(
        samples.body(
            samples.case(
                cf,
                file_server.add(f"{cf}/pdf", samples.pdf()),
                [samples.item("IT-1", file_server.add(f"{cf}/img", samples.png()), data="été ✓")],
            )
        )
    )
    result = casefetch("send", f"{receiver.url}/webhooks", str(payload), *auth)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("202 ")
    assert archive.settled(cf)["status"] == "complete"


def test_send_reports_refusals(receiver: ReceiverProcess, tmp_path: Path) -> None:
    payload = tmp_path / "case.json"
    payload.write_text("{}")
    result = casefetch("send", f"{receiver.url}/webhooks", str(payload), "--bearer", "wrong")
    assert result.returncode == 1 and result.stdout.startswith("401 ")
    result = casefetch("send", f"{receiver.url}/webhooks", str(payload))
    assert result.returncode == 2 and "exactly one" in result.stderr
    result = casefetch(
        "send", f"{receiver.url}/webhooks", str(tmp_path / "missing.json"), "--bearer", "x"
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr


def test_receiver_refuses_to_start_without_credentials() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOK_")}
    result = casefetch("receiver", "--port", str(free_port()), env=env)
    assert result.returncode == 2
    assert "no credential configured" in result.stderr
    assert "Traceback" not in result.stderr


def test_receiver_refuses_to_start_with_a_placeholder_credential() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOK_")}
    # As .env.example ships them.
    env["WEBHOOK_HMAC_KEYS"] = "change-me-api-key:change-me-api-secret"
    result = casefetch("receiver", "--port", str(free_port()), env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "casefetch: WEBHOOK_HMAC_KEYS: the apiKey is a placeholder (it contains 'change-me'): "
        "set a real secret"
    ]


def test_receiver_serves_metrics_on_their_own_port(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    import urllib3

    metrics_port = free_port()
    env = {**receiver_env(redis_server.db_url(5)), "RECEIVER_METRICS_PORT": str(metrics_port)}
    process = ReceiverProcess(env, tmp_path / "receiver.log").start()
    try:
        assert urllib3.request("GET", f"{process.url}/metrics").status == 404
        metrics = urllib3.request("GET", f"http://127.0.0.1:{metrics_port}/metrics")
        assert metrics.status == 200 and b"casefetch_receiver_requests_total" in metrics.data
        # The port is taken now: a second receiver says so, in one line.
        result = casefetch("receiver", "--host", "127.0.0.1", "--port", str(free_port()), env=env)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.splitlines()[-1].startswith(
            f"casefetch: RECEIVER_METRICS_PORT: cannot listen on 127.0.0.1:{metrics_port}"
        )
    finally:
        process.stop()


def test_bad_settings_are_one_line_errors(redis_server: object, tmp_path: Path) -> None:
    env = {**os.environ, "WEBHOOK_BEARER_TOKENS": "t", "RECEIVER_MAX_BODY_BYTES": "lots"}
    result = casefetch("receiver", env=env)
    assert result.returncode == 2 and "RECEIVER_MAX_BODY_BYTES" in result.stderr
    result = casefetch("worker", "--queues", "nope")
    assert result.returncode == 2 and "unknown queue" in result.stderr
    env = {**os.environ, "STORAGE_BACKEND": "floppy"}
    result = casefetch("worker", env=env)
    assert result.returncode == 2 and "STORAGE_BACKEND" in result.stderr
    env = {**os.environ, "DOWNLOAD_HEADERS": '{"X-Api-Key": "k"}', "DOWNLOAD_ALLOWED_HOSTS": ""}
    result = casefetch("worker", env=env)
    assert result.returncode == 2 and result.stderr.startswith("casefetch: DOWNLOAD_HEADERS: ")
    assert len(result.stderr.splitlines()) == 1
    celery = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert celery.returncode == 1 and celery.stderr.startswith("casefetch: DOWNLOAD_HEADERS: ")
    assert len(celery.stderr.splitlines()) == 1


REDIS_PASSWORD = "S3cret-redis-pw"


def test_a_redis_password_is_never_printed(tmp_path: Path) -> None:
    """Receiver, worker and CLI, given a REDIS_URL with a password and nothing listening
    there: each says Redis is unreachable, none prints the password."""
    url = f"redis://casefetch:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0"
    env = {**receiver_env(url), **worker_env(url, tmp_path / "archive")}
    receiver = ReceiverProcess(env, tmp_path / "receiver.log").start()
    try:
        assert receiver.post(samples.body(samples.case("CF-PW", "https://h/c.pdf")))[0] == 503
    finally:
        receiver.stop()
    outputs = {"receiver": receiver.log_path.read_text()}
    assert "enqueue failed" in outputs["receiver"]

    worker = WorkerProcess(env, tmp_path / "worker.log")
    with worker.log_path.open("wb") as log:
        worker.process = subprocess.Popen(
            [sys.executable, "-m", "casefetch_tools", "worker", "--concurrency", "1"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: "Cannot connect to" in worker.log(),
            timeout=30,
            message="the worker to report Redis unreachable",
        )
    finally:
        worker.stop()
    outputs["worker"] = worker.log()
    assert "transport:   redis://casefetch:**@127.0.0.1" in outputs["worker"]  # Celery's mask

    replayed = casefetch("quarantine", "replay", "--all", env=env)
    assert replayed.returncode == 1
    assert "cannot reach Redis at redis://casefetch:***@127.0.0.1:" in replayed.stderr
    outputs["quarantine replay"] = replayed.stdout + replayed.stderr
    for command in ("receiver", "worker"):  # a URL that does not parse, told in one line
        bad = casefetch(command, env={**env, "REDIS_URL": url.replace("/0", "x/0")})
        assert bad.returncode == 2 and bad.stderr.startswith("casefetch: REDIS_URL: ")
        assert "casefetch:***@" in bad.stderr and "Traceback" not in bad.stderr
        outputs[f"bad {command}"] = bad.stdout + bad.stderr
    for name, output in outputs.items():
        assert REDIS_PASSWORD not in output, f"{name} printed the password:\n{output}"


def test_run_starts_a_private_redis_when_none_answers(tmp_path: Path) -> None:
    port = free_port()
    url, server = choose_redis({}, default_port=port, data_dir=tmp_path / "redis")
    try:
        assert server is not None and url == server.url
        assert answers("127.0.0.1", server.port)
    finally:
        assert server is not None
        server.stop()
    assert choose_redis({"REDIS_URL": "redis://elsewhere:1/0"}) == ("redis://elsewhere:1/0", None)


def test_run_serves_the_whole_pipeline(
    redis_server: object, file_server: FileServer, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    from casefetch_tools.redis_server import RedisServer

    assert isinstance(redis_server, RedisServer)
    port = free_port()
    own_db = redis_server.db_url(5)  # apart from the session's worker
    env = {
        **worker_env(own_db, tmp_path / "archive"),
        **{k: v for k, v in receiver_env(own_db).items() if k.startswith("WEBHOOK")},
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "casefetch_tools", "run", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        receiver = ReceiverProcess(env, tmp_path / "unused.log")
        receiver.port = port
        cf = unique("RUN")
        body = samples.body(samples.case(cf, file_server.add(f"{cf}/pdf", samples.pdf())))

        def accepted() -> bool:
            try:
                return receiver.post(body)[0] == 202
            except Exception:
                return False

        wait_for(accepted, timeout=30, interval=0.2, message="casefetch run to accept")
        manifest = Archive(tmp_path / "archive").settled(cf)
        assert manifest["status"] == "complete"
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    assert "files land in" in out and "/metrics (receiver)" in out
    assert process.returncode == 0, out
    json.dumps(manifest)


def test_celery_cli_consumes_every_queue_by_default() -> None:
    from casefetch.constants import ALL_QUEUES
    from worker.app import build_worker
    from worker.settings import WorkerSettings

    app = build_worker(WorkerSettings())
    assert [queue.name for queue in app.conf.task_queues] == list(ALL_QUEUES)
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.broker_transport_options["visibility_timeout"] == 60


def test_a_broken_worker_starts_again_in_the_same_process() -> None:
    # restart_worker replaces the process with a fresh `casefetch <same arguments>`; here the
    # arguments are `--version`, so the fresh process prints it and exits.
    code = (
        "import sys; sys.argv = ['casefetch', '--version'];"
        "from casefetch_tools.worker_command import restart_worker; restart_worker(1)"
    )
    env = {**os.environ, "CASEFETCH_WORKER_RESTARTS": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "version" in result.stdout
    assert "starting it again in 1 s" in result.stderr


@pytest.mark.parametrize(
    ("restarts", "ran_seconds", "delay"), [(4, 5.0, 16), (9, 5.0, 30), (9, 120.0, 1)]
)
def test_failures_in_a_row_back_off_and_a_steady_run_starts_afresh(
    restarts: int, ran_seconds: float, delay: int
) -> None:
    # time.sleep replaced: the delay is read from the log line, not waited for.
    code = (
        "import sys, time; sys.argv = ['casefetch', '--version'];"
        "time.sleep = lambda s: print('slept', s);"
        "from casefetch_tools.worker_command import restart_worker;"
        f"restart_worker(1, {ran_seconds})"
    )
    env = {**os.environ, "CASEFETCH_WORKER_RESTARTS": str(restarts)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert f"starting it again in {delay} s" in result.stderr


def test_a_worker_asked_to_stop_does_not_start_again(redis_server: object, tmp_path: Path) -> None:
    from casefetch_tools.redis_server import RedisServer

    assert isinstance(redis_server, RedisServer)
    own_db = redis_server.db_url(6)
    process = WorkerProcess(worker_env(own_db, tmp_path / "archive"), tmp_path / "w.log").start()
    assert process.process is not None
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(timeout=30) == 0
    assert "starting it again" not in process.log()


#: Runs ``casefetch worker`` with Celery's consumer broken once: it raises what kombu raised
#: after a Redis outage (an AttributeError while closing the lost connection), which Celery
#: reports as "Unrecoverable error" before it stops. The restarted worker is not patched.
_BROKEN_ONCE = """
import sys
from celery.worker.consumer.consumer import Consumer

def start(self):
    raise AttributeError("'NoneType' object has no attribute 'hostname'")

Consumer.start = start
from casefetch_tools.cli import main
main(sys.argv[1:])
"""


def test_a_worker_celery_gave_up_on_starts_again(redis_server: object, tmp_path: Path) -> None:
    from casefetch_tools.redis_server import RedisServer

    assert isinstance(redis_server, RedisServer)
    log_path = tmp_path / "w.log"
    env = {
        **worker_env(redis_server.db_url(6), tmp_path / "archive"),
        "CASEFETCH_WORKER_RESTARTS": "0",
    }
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _BROKEN_ONCE, "worker", "--concurrency", "2"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        wait_for(
            lambda: b" ready." in log_path.read_bytes() or process.poll() is not None,
            timeout=60,
            message="the worker to start again and be ready",
        )
        text = log_path.read_text()
        assert process.poll() is None, f"the worker exited ({process.returncode}):\n{text[-2000:]}"
        assert "Unrecoverable error" in text
        assert "starting it again in 1 s" in text
    finally:
        process.terminate()
        process.wait(timeout=30)
