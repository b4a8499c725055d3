"""Two worker hosts against one Redis and one S3 bucket; one is cut off the network mid-download
(not killed). The other takes the file over and settles the case; when the first comes back
and finishes its download, its fence check refuses to put it in place.

Each host is a network namespace behind a bridge (tests/netns.py); Redis, moto's S3 server
and the file server listen on the bridge's address only. The file server gives each host
different (valid) bytes for the same URL, so the archive shows whose copy landed, and holds
host A's download a quarter of the way until its link is down. The bucket keeps versions:
every write that landed is one.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
import urllib3

from casefetch.protocol import make_delivery
from casefetch_tools.background_server import BackgroundServer
from casefetch_tools.redis_server import answers, free_port
from casefetch_tools.samples import padded
from tests import netns, samples
from tests.processes import CASEFETCH, WorkerProcess, worker_env
from tests.waiting import wait_for
from worker.bookkeeping import Bookkeeping

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
]

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
PDF_BYTES = 2 * 1024 * 1024
CHUNK = 64 * 1024
#: Seconds between chunks: host A's download takes 16 s, anyone else's 1.6 s.
SLOW, FAST = 0.5, 0.05
#: Host A's download stops here until the test has cut its link: it is mid-way for sure.
HELD_AT = PDF_BYTES // 4
#: The contract: work a lost host held resumes elsewhere within two minutes.
TAKEOVER_SECONDS = 120
#: The workers' timing settings: as shipped (a visibility timeout and lock TTL of 60 s, a
#: sweep every 15 s taking a case for stuck after 90 s), and short, for a quicker run.
TIMINGS = {
    "shipped": {},
    "short": {
        "CELERY_VISIBILITY_TIMEOUT": "10",
        "SWEEP_INTERVAL_SECONDS": "2",
        "SWEEP_STUCK_AFTER_SECONDS": "10",
    },
}


@dataclass
class Transfer:
    started: float
    sent: int = 0
    finished: float | None = None


class HostFiles(BackgroundServer):
    """Serves ``/case.pdf``: a PDF of its own to each client address; ``slow_client``'s
    slowly, and only up to HELD_AT until ``go`` is set."""

    def __init__(self, host: str, slow_client: str) -> None:
        super().__init__(host)
        self.slow_client = slow_client
        self.transfers: dict[str, list[Transfer]] = {}
        self.lock = threading.Lock()
        self.go = threading.Event()

    @staticmethod
    def data_for(client: str) -> bytes:
        return padded("pdf", PDF_BYTES, seed=int(client.rsplit(".", 1)[1]))

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        client = request.client_address[0]
        data = self.data_for(client)
        transfer = Transfer(time.monotonic())
        with self.lock:
            self.transfers.setdefault(client, []).append(transfer)
        request.send_response(200)
        request.send_header("Content-Type", "application/pdf")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        slow = client == self.slow_client
        try:
            for start in range(0, len(data), CHUNK):
                if slow and start == HELD_AT:
                    self.go.wait(timeout=300)
                request.wfile.write(data[start : start + CHUNK])
                request.wfile.flush()
                transfer.sent = start + CHUNK
                time.sleep(SLOW if slow else FAST)  # the host's pace, not a wait for anything
        except OSError:
            return
        transfer.finished = time.monotonic()

    def of(self, client: str) -> list[Transfer]:
        with self.lock:
            return list(self.transfers.get(client, []))


@pytest.fixture(scope="module")
def network() -> Iterator[netns.Network]:
    built = netns.Network(["a", "b"]).create()
    yield built
    built.remove()


@pytest.fixture(scope="module")
def services(
    network: netns.Network, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Redis and moto's S3 server on the bridge's address; their URLs."""
    tmp = tmp_path_factory.mktemp("partition-services")
    host = network.gateway
    redis_port, s3_port = free_port(), free_port()
    binary = shutil.which("redis-server")
    assert binary is not None
    moto_log = (tmp / "moto.log").open("wb")
    started = [
        subprocess.Popen(
            # Not protected mode: the hosts are not loopback clients, and the address is
            # only on the test's own bridge.
            [
                *(binary, "--bind", host, "--port", str(redis_port), "--protected-mode", "no"),
                *("--save", "", "--dir", str(tmp)),
            ],
            stdout=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", host, "-p", str(s3_port)],
            stdout=moto_log,
            stderr=subprocess.STDOUT,
        ),
    ]
    try:
        endpoint = f"http://{host}:{s3_port}"

        def up() -> bool:
            for process in started:
                assert process.poll() is None, "a service exited"
            try:
                moto = urllib3.request("GET", f"{endpoint}/moto-api/", retries=False, timeout=1)
            except urllib3.exceptions.HTTPError:
                return False
            return moto.status == 200 and answers(host, redis_port)

        wait_for(up, timeout=30, message="Redis and moto on the bridge")
        yield {"redis": f"redis://{host}:{redis_port}", "s3": endpoint}
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=10)
        moto_log.close()


def s3(endpoint: str) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@dataclass
class Cluster:
    """Where the hosts of one test meet: a Redis database and a bucket of their own."""

    redis_url: str
    s3_endpoint: str
    bucket: str
    timings: dict[str, str]

    def env(self, tmp: Path, **extra: str) -> dict[str, str]:
        return worker_env(
            self.redis_url,
            tmp / "unused",
            STORAGE_BACKEND="s3",
            S3_BUCKET=self.bucket,
            S3_ENDPOINT_URL=self.s3_endpoint,
            **CREDENTIALS,
            **self.timings,
            **extra,
        )

    def manifest(self, client: Any, cf_ref: str) -> dict[str, Any] | None:
        key = f"cases/{cf_ref}/manifest.json"
        try:
            raw = client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            return None
        manifest: dict[str, Any] = json.loads(raw)
        return manifest

    def settled(self, client: Any, cf_ref: str) -> dict[str, Any] | None:
        manifest = self.manifest(client, cf_ref)
        return manifest if manifest is not None and manifest["status"] != "pending" else None

    def versions(self, client: Any, key: str) -> int:
        found = client.list_object_versions(Bucket=self.bucket, Prefix=key).get("Versions", [])
        return sum(1 for version in found if version["Key"] == key)


def deliver(books: Bookkeeping, cf_ref: str, url: str) -> None:
    """Accept a case of one PDF, as the receiver does."""
    body = samples.body(samples.case(cf_ref, url))
    books.enqueue(make_delivery(body, {"Content-Type": "application/json"}))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("timing", list(TIMINGS))
def test_a_host_cut_off_mid_download_loses_the_file_and_never_overwrites_it(
    network: netns.Network,
    services: dict[str, str],
    tmp_path: Path,
    report_line: Callable[[str], None],
    timing: str,
) -> None:
    a, b = network.hosts["a"], network.hosts["b"]
    db = list(TIMINGS).index(timing)
    cluster = Cluster(
        f"{services['redis']}/{db}", services["s3"], f"casefetch-partition-{db}", TIMINGS[timing]
    )
    client = s3(cluster.s3_endpoint)
    client.create_bucket(Bucket=cluster.bucket)
    client.put_bucket_versioning(
        Bucket=cluster.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    files = HostFiles(network.gateway, slow_client=a.address).start()
    # Host A's download waits out the partition (no between-bytes timeout before it ends),
    # so it finishes after the link is back, and tries to put a stale file in place.
    worker_a = WorkerProcess(
        cluster.env(tmp_path, DOWNLOAD_TIMEOUT_SECONDS="600"),
        tmp_path / "a.log",
        command=a.command(*CASEFETCH),
        concurrency=2,
    )
    worker_b = WorkerProcess(
        cluster.env(tmp_path),
        tmp_path / "b.log",
        command=b.command(*CASEFETCH),
        concurrency=2,
    )
    books = Bookkeeping(redis.Redis.from_url(cluster.redis_url))
    try:
        worker_a.start()
        cf_ref = "CF-PARTITION"
        url = f"http://{network.gateway}:{files.port}/case.pdf"
        deliver(books, cf_ref, url)
        download_a = wait_for(
            lambda: next((t for t in files.of(a.address) if t.sent >= HELD_AT), None),
            timeout=60,
            message="host A to be a quarter through the download",
        )
        worker_b.start()
        a.cut()
        cut = time.monotonic()
        files.go.set()  # the rest of A's copy waits in the server's socket for the link
        first_byte_b = (
            wait_for(
                lambda: next(iter(files.of(b.address)), None),
                timeout=TAKEOVER_SECONDS + 30,
                message="host B to fetch the file",
            ).started
            - cut
        )
        manifest = wait_for(
            lambda: cluster.settled(client, cf_ref),
            timeout=TAKEOVER_SECONDS + 30,
            message="host B to settle the case",
        )
        complete = time.monotonic() - cut
        a.reconnect()

        # TCP resends A's stalled transfer (backing off, up to 2 minutes apart), which then
        # ends; A puts its copy in place, or its fence check refuses it.
        wait_for(
            lambda: download_a.finished, timeout=240, message="host A's download to resume and end"
        )
        key = f"cases/{cf_ref}/case.pdf"
        late = wait_for(
            lambda: re.search(
                rf"(not storing {cf_ref}/case\.pdf: its lock \(fence \d+\))|storing {key}",
                worker_a.log(),
            ),
            timeout=30,
            message="host A to commit its stale download",
        )
        stored = client.get_object(Bucket=cluster.bucket, Key=key)["Body"].read()
        ours = HostFiles.data_for(b.address)
        assert hashlib.sha256(stored).hexdigest() == samples.sha(ours), "not host B's copy"
        duplicates = cluster.versions(client, key) - 1
        assert duplicates == 0
        assert late.group(1), f"host A's late commit was not refused: {late.group(0)}"
        assert manifest["status"] == "complete"
        assert manifest["files"][0]["sha256"] == samples.sha(ours)
        assert cluster.manifest(client, cf_ref) == manifest
        storing = [
            line
            for w in (worker_a, worker_b)
            for line in w.log().splitlines()
            if "storing cases/" in line
        ]
        assert len(storing) == 1 and storing[0] in worker_b.log()
        verify = subprocess.run(
            [*CASEFETCH, "archive", "verify", cf_ref],
            env=cluster.env(tmp_path),
            capture_output=True,
            text=True,
            check=False,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr

        assert worker_a.running() and worker_b.running()
        # Host A is still a working host: with B gone, it archives the next case alone.
        worker_b.stop()
        next_ref = "CF-AFTER"
        deliver(books, next_ref, url)
        after = wait_for(
            lambda: cluster.settled(client, next_ref),
            timeout=120,
            message="host A to archive a case after the partition",
        )
        assert after["files"][0]["sha256"] == samples.sha(HostFiles.data_for(a.address))
        assert worker_a.running()
        for log in (worker_a.log(), worker_b.log()):
            assert "Traceback" not in log, log[-4000:]
        report_line(
            f"partition, {timing} timings: link down -> host B's first byte "
            f"{first_byte_b:.1f} s, case complete {complete:.1f} s; host A's late commit "
            f"refused ({late.group(0)}); duplicate writes {duplicates}"
        )
        assert complete < TAKEOVER_SECONDS
    finally:
        a.reconnect()
        worker_a.stop()
        worker_b.stop()
        files.stop()
        books.redis.close()
