"""The S3 backend against a real S3 API: moto's server on a free port, in its own process.

The end-to-end tests run the real receiver and a real ``casefetch worker`` with
STORAGE_BACKEND=s3, on their own Redis database so they never take the local worker's work.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import urllib3

from casefetch.protocol import make_delivery
from casefetch_tools.redis_server import RedisServer, free_port
from tests import samples
from tests.fileserver import FileServer
from tests.paths import ROOT
from tests.processes import ReceiverProcess, WorkerProcess, receiver_env, worker_env
from tests.samples import closed_after_test, sha
from tests.waiting import wait_for
from worker.bookkeeping import Bookkeeping
from worker.errors import AccessRefused, BucketMissing, NotFound, StorageError
from worker.s3 import MIN_PART_BYTES, PART_BYTES, S3Storage
from worker.settings import WorkerSettings

REGION = "us-east-1"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}
PREFIX = "archive/v1"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError("moto server exited")
        try:
            return (
                urllib3.request("GET", f"{endpoint}/moto-api/", retries=False, timeout=1).status
                == 200
            )
        except urllib3.exceptions.HTTPError:
            return False

    wait_for(up, timeout=30, message="the moto S3 server")
    yield endpoint
    process.terminate()
    process.wait(timeout=10)
    log.close()


@pytest.fixture(scope="module")
def s3_client(s3_endpoint: str) -> Any:
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def bucket(s3_client: Any, unique: Callable[[str], str]) -> str:
    name = unique("bucket").lower()
    s3_client.create_bucket(Bucket=name)
    return name


def s3_worker_env(redis_url: str, tmp: Path, endpoint: str, bucket: str) -> dict[str, str]:
    return worker_env(
        redis_url,
        tmp,
        STORAGE_BACKEND="s3",
        S3_BUCKET=bucket,
        S3_PREFIX=PREFIX,
        S3_ENDPOINT_URL=endpoint,
        **CREDENTIALS,
    )


@pytest.fixture(scope="module")
def s3_stack(
    redis_server: RedisServer,
    s3_endpoint: str,
    s3_client: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ReceiverProcess, WorkerProcess, str]]:
    """Receiver and S3 worker on Redis database 1, archiving to one bucket. No test flushes
    that database while they run (tests/databases.py: KEPT)."""
    bucket = "casefetch-e2e"
    s3_client.create_bucket(Bucket=bucket)
    url = redis_server.db_url(1)
    logs = tmp_path_factory.mktemp("s3-logs")
    worker = WorkerProcess(
        s3_worker_env(url, logs / "unused", s3_endpoint, bucket), logs / "worker.log"
    ).start()
    receiver = ReceiverProcess(receiver_env(url), logs / "receiver.log").start()
    yield receiver, worker, bucket
    receiver.stop()
    worker.stop()


def read_object(client: Any, bucket: str, key: str) -> bytes | None:
    try:
        data: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    return data


def settled_manifest(
    client: Any, bucket: str, cf_ref: str, timeout: float = 30.0
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        raw = read_object(client, bucket, f"{PREFIX}/cases/{cf_ref}/manifest.json")
        manifest = json.loads(raw) if raw else None
        return manifest if manifest and manifest["status"] != "pending" else None

    return wait_for(done, timeout=timeout, message=f"case {cf_ref} to settle in S3")


# -- the storage on its own ------------------------------------------------------------------


def test_storage_keys_reads_lists_moves_deletes(s3_client: Any, bucket: str) -> None:
    storage = S3Storage(s3_client, bucket, prefix="/tenant/a/")
    storage.write_bytes("cases/CF-1/case.json", b'{"a": 1}')
    assert read_object(s3_client, bucket, "tenant/a/cases/CF-1/case.json") == b'{"a": 1}'
    assert storage.read_bytes("cases/CF-1/case.json") == b'{"a": 1}'
    with storage.open_reader("cases/CF-1/case.json") as reader:
        assert reader.read() == b'{"a": 1}'
    assert storage.exists("cases/CF-1/case.json")
    assert not storage.exists("cases/CF-1/nothing")
    storage.move("cases/CF-1/case.json", "cases/CF-1/history/D-1.json")
    assert sorted(storage.list("cases/CF-1/")) == ["cases/CF-1/history/D-1.json"]
    with pytest.raises(NotFound):
        storage.read_bytes("cases/CF-1/case.json")
    storage.delete("cases/CF-1/history/D-1.json")
    storage.delete("cases/CF-1/history/D-1.json")  # deleting what is gone is fine
    assert list(storage.list("cases/")) == []
    assert storage.describe() == f"s3://{bucket}/tenant/a"
    for unsafe in ("../x", "/abs", "a//b", "a/./b"):
        with pytest.raises(StorageError):
            storage.write_bytes(unsafe, b"x")


def test_large_writes_are_multipart_and_appear_only_when_complete(
    s3_client: Any, bucket: str
) -> None:
    storage = S3Storage(s3_client, bucket, part_size=MIN_PART_BYTES)
    chunk = bytes(range(256)) * 4096  # 1 MiB
    data = chunk * 12
    with storage.open_writer("big.bin") as writer:
        for start in range(0, len(data), len(chunk)):
            writer.write(data[start : start + len(chunk)])
        # Two parts are already in S3, yet no object is visible.
        assert not storage.exists("big.bin")
        assert len(s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
    head = s3_client.head_object(Bucket=bucket, Key="big.bin")
    assert head["ContentLength"] == len(data) and head["ETag"].endswith('-3"')
    assert sha(storage.read_bytes("big.bin")) == sha(data)

    with pytest.raises(RuntimeError), storage.open_writer("broken.bin") as writer:
        for _ in range(7):
            writer.write(chunk)
        raise RuntimeError("the download broke off")
    assert not storage.exists("broken.bin")
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    with storage.open_writer("small.bin") as writer:
        writer.write(b"tiny")
    assert storage.read_bytes("small.bin") == b"tiny"


def test_uploads_of_dead_writers_are_aborted(s3_client: Any, bucket: str) -> None:
    storage = S3Storage(s3_client, bucket, prefix="mine")
    dead = s3_client.create_multipart_upload(Bucket=bucket, Key="mine/cases/x/case.pdf")
    s3_client.upload_part(
        Bucket=bucket,
        Key="mine/cases/x/case.pdf",
        PartNumber=1,
        UploadId=dead["UploadId"],
        Body=b"%PDF-",
    )
    other = s3_client.create_multipart_upload(Bucket=bucket, Key="theirs/file")

    assert storage.remove_stale_temp(3600) == 0, "recent uploads are left alone"
    assert storage.remove_stale_temp(-1) == 1, "only uploads under the prefix"
    left = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["UploadId"] for u in left] == [other["UploadId"]]


def test_a_missing_bucket_is_a_clear_storage_error(s3_client: Any) -> None:
    storage = S3Storage(s3_client, "no-such-bucket-here")
    for action in (
        lambda: storage.write_bytes("cases/x/case.json", b"{}"),
        lambda: storage.read_bytes("cases/x/case.json"),
    ):
        with pytest.raises(BucketMissing) as caught:
            action()
        assert isinstance(caught.value, StorageError)
        assert "no-such-bucket-here" in str(caught.value) and "does not exist" in str(caught.value)


def test_refused_writes_and_an_unreachable_store_are_storage_errors(s3_client: Any) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    storage = S3Storage(s3_client, "casefetch")
    refused = ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "PutObject"
    )
    error = storage._client_error(refused, "write", "cases/x/case.pdf")
    assert isinstance(error, AccessRefused) and isinstance(error, StorageError)
    assert "refused to write cases/x/case.pdf" in str(error) and error.key == "cases/x/case.pdf"

    nowhere = boto3.session.Session().client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2),
    )
    with pytest.raises(StorageError, match="Could not connect"):
        S3Storage(nowhere, "casefetch").write_bytes("cases/x/case.json", b"{}")


# -- the pipeline writing to S3 --------------------------------------------------------------


def test_webhook_becomes_verified_objects(
    s3_stack: tuple[ReceiverProcess, WorkerProcess, str],
    s3_client: Any,
    file_server: FileServer,
    unique: Callable[[str], str],
) -> None:
    receiver, _worker, bucket = s3_stack
    cf = unique("CF")
    pdf, png, jpg = samples.pdf(60_000), samples.png(seed=7), samples.jpeg(30_000, seed=8)
    items = [
        samples.item("IT-1", file_server.add(f"{cf}/photo", png)),
        samples.item("IT-2", file_server.add(f"{cf}/sign", jpg), step="SIGNATURE"),
        samples.item("IT-3", None, step="TEXT_FIELD", data="libellé"),
    ]
    body = samples.body(samples.case(cf, file_server.add(f"{cf}/report", pdf), items))
    status, answer = receiver.post(body)
    assert status == 202, answer

    manifest = settled_manifest(s3_client, bucket, cf)
    assert manifest["status"] == "complete"
    folder = f"{PREFIX}/cases/{cf}"
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{folder}/")
    assert {o["Key"] for o in listed["Contents"]} == {
        f"{folder}/{name}"
        for name in (
            "case.json",
            "manifest.json",
            "index.html",
            "case.pdf",
            "items/001-IT-1.png",
            "items/002-IT-2.jpg",
        )
    }
    assert read_object(s3_client, bucket, f"{folder}/case.json") == body
    page = read_object(s3_client, bucket, f"{folder}/index.html")
    assert page is not None and "libellé".encode() in page
    assert b'src="items/001-IT-1.png"' in page
    for entry in manifest["files"]:
        stored = read_object(s3_client, bucket, f"{folder}/{entry['path']}")
        assert stored is not None
        assert entry["sha256"] == sha(stored) and entry["bytes"] == len(stored)
    assert {e["path"]: sha(d) for e, d in zip(manifest["files"], (pdf, png, jpg), strict=True)} == {
        e["path"]: e["sha256"] for e in manifest["files"]
    }


async def test_archive_serve_reads_a_bucket(
    aiohttp_client: Any, s3_client: Any, bucket: str, tmp_path: Path
) -> None:
    from casefetch_tools.browse import BrowseSettings, create_app
    from worker.catalog import Catalog

    storage = S3Storage(s3_client, bucket, prefix=PREFIX)
    png = samples.png(seed=4)
    storage.write_bytes("cases/CF-S3/items/001-IT-1.png", png)
    storage.write_bytes(
        "cases/CF-S3/case.json",
        samples.body(samples.case("CF-S3", "http://x/pdf", [samples.item("IT-1", "http://x/1")])),
    )
    storage.write_bytes(
        "cases/CF-S3/manifest.json",
        json.dumps(
            {
                "cfRef": "CF-S3",
                "reportId": "R-S3",
                "status": "complete",
                "updatedAt": "2026-11-28",
                "files": [
                    {
                        "path": "items/001-IT-1.png",
                        "kind": "item_image",
                        "item": 1,
                        "status": "stored",
                        "sha256": sha(png),
                        "bytes": len(png),
                        "contentType": "image/png",
                        "error": None,
                    }
                ],
                "warnings": [],
            }
        ).encode(),
    )
    catalog = Catalog(tmp_path / "index.sqlite")
    assert catalog.rebuild(storage) == 1
    client = await aiohttp_client(create_app(storage, catalog, BrowseSettings()))
    assert "CF-S3" in await (await client.get("/?q=r-s3")).text()
    assert 'src="items/001-IT-1.png"' in await (await client.get("/cases/CF-S3/")).text()
    image = await client.get("/cases/CF-S3/items/001-IT-1.png")
    assert image.headers["Content-Type"] == "image/png" and await image.read() == png
    assert (await client.get("/cases/CF-S3/items/002-IT-2.png")).status == 404


def test_case_waits_for_a_missing_bucket_then_completes(
    redis_server: RedisServer,
    s3_endpoint: str,
    s3_client: Any,
    file_server: FileServer,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    bucket = unique("late-bucket").lower()
    url = redis_server.db_url(2)
    worker = WorkerProcess(
        s3_worker_env(url, tmp_path / "unused", s3_endpoint, bucket), tmp_path / "worker.log"
    ).start()
    client = redis.Redis.from_url(url)
    try:
        cf = unique("CF")
        pdf = samples.pdf(5_000)
        body = samples.body(samples.case(cf, file_server.add(f"{cf}/report", pdf)))
        delivery = make_delivery(body, {"Content-Type": "application/json"})
        Bookkeeping(client).enqueue(delivery)  # as the receiver does
        wait_for(
            lambda: f"S3 bucket '{bucket}' does not exist" in worker.log(),
            message="the worker to report the missing bucket",
        )
        assert "postponed" in worker.log()

        s3_client.create_bucket(Bucket=bucket)
        manifest = settled_manifest(s3_client, bucket, cf)
        assert manifest["status"] == "complete"
        stored = read_object(s3_client, bucket, f"{PREFIX}/cases/{cf}/case.pdf")
        assert stored == pdf and manifest["files"][0]["sha256"] == sha(pdf)
    finally:
        client.close()
        worker.stop()


def peak_rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_large_file_streams_to_s3_with_bounded_memory(
    s3_stack: tuple[ReceiverProcess, WorkerProcess, str],
    s3_client: Any,
    file_server: FileServer,
    unique: Callable[[str], str],
) -> None:
    receiver, worker, bucket = s3_stack
    assert worker.process is not None
    # A small case first, so the baseline includes every module and connection the path uses.
    warm = unique("CF")
    receiver.post(samples.body(samples.case(warm, file_server.add(f"{warm}/r", samples.pdf()))))
    assert settled_manifest(s3_client, bucket, warm)["status"] == "complete"
    baseline = peak_rss_bytes(worker.process.pid)

    cf = unique("CF")
    size = 96 * 1024 * 1024
    pdf = samples.pdf(size)
    assert (
        receiver.post(samples.body(samples.case(cf, file_server.add(f"{cf}/big", pdf))))[0] == 202
    )
    manifest = settled_manifest(s3_client, bucket, cf, timeout=90)
    growth = peak_rss_bytes(worker.process.pid) - baseline
    print(f"\npeak RSS growth for a {size >> 20} MiB file: {growth / 2**20:.1f} MiB")

    assert manifest["status"] == "complete"
    [entry] = manifest["files"]
    assert entry["bytes"] == size and entry["sha256"] == sha(pdf)
    key = f"{PREFIX}/cases/{cf}/case.pdf"
    assert s3_client.head_object(Bucket=bucket, Key=key)["ETag"].endswith(f'-{size // PART_BYTES}"')
    digest = hashlib.sha256()
    for chunk in s3_client.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(1 << 20):
        digest.update(chunk)
    assert digest.hexdigest() == entry["sha256"]
    # About two parts in memory (one gathering, one being sent), whatever the file's size.
    assert growth < 3 * PART_BYTES, f"peak RSS grew by {growth} bytes for a {size}-byte file"


def test_worker_refuses_to_start_without_a_bucket(tmp_path: Path) -> None:
    env = worker_env("redis://127.0.0.1:1/0", tmp_path, STORAGE_BACKEND="s3")
    env.pop("S3_BUCKET", None)
    result = subprocess.run(
        [sys.executable, "-m", "casefetch_tools", "worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "S3_BUCKET" in result.stderr and "Traceback" not in result.stderr


def test_credentials_can_come_from_secret_files(tmp_path: Path, s3_endpoint: str) -> None:
    (tmp_path / "key").write_text("key-from-file\n")
    (tmp_path / "secret").write_text("secret-from-file\n")
    settings = WorkerSettings(
        storage_backend="s3", s3_bucket="casefetch", s3_endpoint_url=s3_endpoint
    )
    storage = S3Storage.from_settings(
        settings,
        {
            "AWS_ACCESS_KEY_ID_FILE": str(tmp_path / "key"),
            "AWS_SECRET_ACCESS_KEY_FILE": str(tmp_path / "secret"),
        },
    )
    credentials = storage.client._request_signer._credentials
    assert (credentials.access_key, credentials.secret_key) == ("key-from-file", "secret-from-file")


def test_worker_with_an_unreadable_secret_file_refuses_to_start(tmp_path: Path) -> None:
    env = worker_env(
        "redis://127.0.0.1:1/0",
        tmp_path,
        STORAGE_BACKEND="s3",
        S3_BUCKET="casefetch",
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY_FILE=str(tmp_path / "missing"),
    )
    result = subprocess.run(
        [sys.executable, "-m", "casefetch_tools", "worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "AWS_SECRET_ACCESS_KEY_FILE" in result.stderr and "Traceback" not in result.stderr


def test_a_slow_but_steady_upload_outlives_every_sweep(
    s3_client: Any, bucket: str, file_server: FileServer, redis_server: RedisServer
) -> None:
    """Below about 14 KB/s an 8 MiB part takes over ten minutes: by the upload's age a live
    download looked dead, was aborted, and started again from zero, for ever. The sweep now
    asks the download's heartbeat (its file lock), not the age."""
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as Pending

    from casefetch.constants import DOWNLOAD_QUEUE
    from worker.batch import fetch_batch
    from worker.download import Fetcher
    from worker.runtime import Runtime
    from worker.settings import DownloadSettings
    from worker.sweep import sweep_once

    client = redis.Redis.from_url(redis_server.db_url(15))
    client.flushdb()
    storage = S3Storage(s3_client, bucket, prefix=PREFIX, part_size=MIN_PART_BYTES)
    runtime = Runtime(
        client,
        storage,
        closed_after_test(
            Fetcher(
                DownloadSettings(allow_private_networks=True, timeout_seconds=5, max_attempts=1)
            )
        ),
        download_threads=1,
    )
    # The first part at full speed, then about 10 KB/s for the rest (three seconds).
    data = samples.pdf(MIN_PART_BYTES + 30_000)
    url = file_server.add("s3-slow/pdf", data, trickle=(MIN_PART_BYTES + 1000, 2000, 0.2))
    delivery = make_delivery(samples.body(samples.case("S3-SLOW", url)), {})
    assert runtime.pipeline.ingest(delivery) == "planned"
    [raw] = client.lrange(DOWNLOAD_QUEUE, 0, -1)
    [message], _, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
    # Sweeps that take every temporary object without a live writer for stale at once.
    eager = WorkerSettings(
        stale_temp_after_seconds=0, stuck_after_seconds=3600, visibility_timeout_seconds=3600
    )
    sweeps_while_uploading = 0
    with ThreadPoolExecutor(1) as pool:
        fetching = pool.submit(fetch_batch, runtime, message)
        while True:
            uploads = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            sweep_once(runtime, eager)
            sweeps_while_uploading += bool(uploads)
            try:
                outcomes, postponed = fetching.result(timeout=0.2)
                break
            except Pending:
                continue
    runtime.files.shutdown()
    assert postponed is None and outcomes == ["stored"]
    assert sweeps_while_uploading >= 3, "no sweep ran while the upload was under way"
    assert file_server.hits["/s3-slow/pdf"] == 1, "the download started again"
    manifest = settled_manifest(s3_client, bucket, "S3-SLOW")
    assert manifest["status"] == "complete" and manifest["files"][0]["sha256"] == sha(data)
    assert read_object(s3_client, bucket, f"{PREFIX}/cases/S3-SLOW/case.pdf") == data

    # An upload nobody's heartbeat covers (its writer died) is still aborted.
    s3_client.create_multipart_upload(Bucket=bucket, Key=f"{PREFIX}/cases/S3-SLOW/case.pdf")
    sweep_once(runtime, eager)
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    client.close()
