"""``casefetch archive`` and ``casefetch quarantine`` against archives the real pipeline wrote."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rich.console import Console

from casefetch.protocol import make_delivery
from casefetch_tools.redis_server import RedisServer
from casefetch_tools.terminal import each_with_progress
from tests import samples
from tests.archive_view import Archive
from tests.fileserver import Fault, FileServer
from tests.paths import ROOT
from tests.processes import ReceiverProcess, WorkerProcess, worker_env
from tests.samples import sha
from tests.test_pipeline import enqueue_raw
from worker.pipeline import Pipeline
from worker.quarantine import REPLAY_HEADER
from worker.storage import LocalStorage


@pytest.fixture
def cli(
    redis_server: RedisServer, archive_dir: Path
) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str, archive: Path = archive_dir) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "casefetch_tools", *args],
            capture_output=True,
            text=True,
            env=worker_env(redis_server.url, archive),
            cwd=ROOT,
            timeout=60,
        )

    return run


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_line_failure(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


@pytest.fixture
def two_cases(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    unique: Callable[[str], str],
) -> Iterator[tuple[str, str]]:
    """A complete case and an incomplete one (an image the server no longer has)."""
    good, bad = unique("OK"), unique("BAD")
    for cf, image in [
        (good, file_server.add(f"{good}/img", samples.png(seed=7))),
        (bad, file_server.add(f"{bad}/img", samples.png(), always=Fault(404))),
    ]:
        body = samples.body(
            samples.case(
                cf,
                file_server.add(f"{cf}/pdf", samples.pdf()),
                [samples.item("IT-1", image), samples.item("IT-2", None, step="TEXT_FIELD")],
            )
        )
        assert receiver.post(body)[0] == 202
    archive.settled(good)
    archive.settled(bad)
    yield good, bad


def test_list_and_show_tell_what_arrived_and_what_failed(
    cli: Callable[..., subprocess.CompletedProcess[str]],
    archive: Archive,
    two_cases: tuple[str, str],
) -> None:
    good, bad = two_cases
    listed = {c["cfRef"]: c for c in as_json(cli("archive", "list", "--json"))}
    assert listed[good]["status"] == "complete" and listed[bad]["status"] == "incomplete"
    assert (listed[good]["filesStored"], listed[good]["filesTotal"]) == (2, 2)
    assert (listed[bad]["filesStored"], listed[bad]["filesTotal"]) == (1, 2)
    assert listed[bad]["filesFailed"] == 1
    assert listed[good]["bytes"] == len(samples.pdf()) + len(samples.png(seed=7))
    order = [c["cfRef"] for c in as_json(cli("archive", "list", "--json"))]
    assert order.index(bad) < order.index(good) or (
        listed[bad]["updatedAt"] == listed[good]["updatedAt"]
    ), "newest first"

    failed = {
        c["cfRef"]
        for c in as_json(
            cli("archive", "list", "--status", "incomplete", "--since", "today", "--json")
        )
    }
    assert bad in failed and good not in failed
    table = cli("archive", "list", "--status", "incomplete")
    assert table.returncode == 0 and bad in table.stdout and good not in table.stdout
    assert not as_json(cli("archive", "list", "--since", "2999-01-01", "--json"))

    shown = as_json(cli("archive", "show", bad, "--json"))
    files = {f["path"]: f for f in shown["manifest"]["files"]}
    assert files["items/001-IT-1"]["status"] == "failed"
    assert "404" in files["items/001-IT-1"]["error"]
    assert files["case.pdf"]["sha256"] == sha(samples.pdf())
    assert [(i["cfRef"], i["stepAction"]) for i in shown["items"]] == [
        ("IT-1", "PHOTOGRAPHY"),
        ("IT-2", "TEXT_FIELD"),
    ]
    assert shown["items"][0]["file"]["status"] == "failed" and shown["items"][1]["file"] is None

    text = cli("archive", "show", bad)
    assert text.returncode == 0
    assert sha(samples.pdf()) in text.stdout, "the whole sha256 is shown"
    assert "HTTP 404" in text.stdout and "failed" in text.stdout

    one_line_failure(cli("archive", "show", "NO-SUCH-CASE"))
    one_line_failure(cli("archive", "show", "../../etc"))


def test_verify_finds_tampered_and_missing_files(
    cli: Callable[..., subprocess.CompletedProcess[str]],
    archive: Archive,
    two_cases: tuple[str, str],
) -> None:
    good, bad = two_cases
    ok = cli("archive", "verify", good)
    assert ok.returncode == 0 and "all intact" in ok.stdout and "2 file(s)" in ok.stdout
    assert cli("archive", "verify", bad).returncode == 0, "a failed download is no mismatch"

    image = archive.case(good) / "items/001-IT-1.png"
    pdf = archive.case(bad) / "case.pdf"
    original_image, original_pdf = image.read_bytes(), pdf.read_bytes()
    try:
        image.write_bytes(original_image[:-1] + b"\x00")
        pdf.unlink()
        result = cli("archive", "verify", good)
        assert result.returncode == 1
        assert f"{good}\titems/001-IT-1.png\tsha256 mismatch" in result.stdout
        everything = cli("archive", "verify")
        assert everything.returncode == 1
        assert f"{good}\titems/001-IT-1.png\tsha256 mismatch" in everything.stdout
        assert f"{bad}\tcase.pdf\tmissing" in everything.stdout
        assert "problem(s)" in everything.stderr and "Traceback" not in everything.stderr
    finally:
        image.write_bytes(original_image)
        pdf.write_bytes(original_pdf)
    assert cli("archive", "verify", good).returncode == 0
    one_line_failure(cli("archive", "verify", "NO-SUCH-CASE"))


def test_retry_fetches_what_failed_once_the_server_is_fixed(
    cli: Callable[..., subprocess.CompletedProcess[str]],
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    unique: Callable[[str], str],
) -> None:
    cf = unique("RETRY")
    png = samples.png(seed=11)
    pdf_url = file_server.add(f"{cf}/pdf", samples.pdf())
    items = [
        samples.item("IT-1", file_server.add(f"{cf}/img", png, always=Fault(503))),
        samples.item("IT-2", "not a url"),
    ]
    assert receiver.post(samples.body(samples.case(cf, pdf_url, items)))[0] == 202
    before = archive.settled(cf)
    assert before["status"] == "incomplete"

    file_server.add(f"{cf}/img", png)  # the file host is back
    result = cli("archive", "retry", cf, "--wait", "--timeout", "60")
    assert "re-queued 1 file(s): items/001-IT-1" in result.stdout, result.stderr
    manifest = archive.manifest(cf)
    assert manifest is not None
    files = {f["path"]: f for f in manifest["files"]}
    assert files["items/001-IT-1.png"]["status"] == "stored"
    assert files["items/001-IT-1.png"]["sha256"] == sha(png)
    assert (archive.case(cf) / "items/001-IT-1.png").read_bytes() == png
    assert files["items/002-IT-2"]["status"] == "failed", "an invalid URL is not retried"
    assert manifest["status"] == "incomplete" and result.returncode == 1
    assert file_server.hits[f"/{cf}/pdf"] == 1, "what was stored is not fetched again"

    again = cli("archive", "retry", cf)
    assert again.returncode == 0 and "no failed download to retry" in again.stdout
    one_line_failure(cli("archive", "retry", "NO-SUCH-CASE"))


def test_retry_and_warnings_of_a_case_with_non_ascii_urls(
    cli: Callable[..., subprocess.CompletedProcess[str]],
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    unique: Callable[[str], str],
) -> None:
    cf = unique("ÉTÉ")
    pdf, heic = samples.pdf(), samples.heic()
    pdf_url = file_server.add(f"{cf}/rapport-été.pdf", pdf, always=Fault(503))
    items = [samples.item("IT-1", file_server.add(f"{cf}/photo été.heic", heic))]
    plain = unique("PLAIN")
    assert (
        receiver.post(samples.body(samples.case(plain, file_server.add(f"{plain}/pdf", pdf))))[0]
        == 202
    )
    assert receiver.post(samples.body(samples.case(cf, pdf_url, items)))[0] == 202
    before = archive.settled(cf)
    assert before["status"] == "incomplete"
    assert before["files"][0]["error"] == "HTTP 503", before["files"][0]
    assert archive.settled(plain)["warnings"] == []

    file_server.add(f"{cf}/rapport-été.pdf", pdf)  # the host is back
    result = cli("archive", "retry", cf, "--wait", "--timeout", "60")
    assert result.returncode == 0 and f"{cf}: complete" in result.stdout, result.stderr
    manifest = archive.manifest(cf)
    assert manifest is not None and manifest["files"][0]["sha256"] == sha(pdf)
    # The HEIC photo is kept, warned about once (the retry settled the case again).
    assert [w["itemCfRef"] for w in manifest["warnings"]] == ["IT-1"]
    assert manifest["files"][1]["path"] == "items/001-IT-1.heic"

    warned = {c["cfRef"]: c for c in as_json(cli("archive", "list", "--warnings", "--json"))}
    assert warned[cf]["warnings"] == 1 and warned[cf]["status"] == "complete"
    assert all(c["warnings"] > 0 for c in warned.values())
    assert plain in {c["cfRef"] for c in as_json(cli("archive", "list", "--json"))}
    assert plain not in warned
    shown = cli("archive", "show", cf)
    assert "items/001-IT-1.heic" in shown.stdout and "stored as .heic" in shown.stdout


def test_quarantine_list_show_and_replay(
    cli: Callable[..., subprocess.CompletedProcess[str]],
    worker: WorkerProcess,
    archive: Archive,
    redis_client: redis.Redis,
    unique: Callable[[str], str],
) -> None:
    cf = unique("Q")
    bad_body = samples.body({**samples.case(cf, "https://files.example.com/c.pdf"), "reportId": 12})
    old = enqueue_raw(redis_client, bad_body)
    archive.quarantined(old)

    listed = {r["deliveryId"]: r for r in as_json(cli("quarantine", "list", "--json"))}
    assert listed[old]["reason"] == "invalid_case"
    assert any(line.startswith("reportId") for line in listed[old]["errors"])
    table = cli("quarantine", "list")
    assert table.returncode == 0 and old in table.stdout
    record = as_json(cli("quarantine", "show", old, "--json"))
    assert record["body"].encode() == bad_body
    text = cli("quarantine", "show", old)
    assert text.returncode == 0 and "invalid_case" in text.stdout and cf in text.stdout
    one_line_failure(cli("quarantine", "show", "nope"))

    # Still unarchivable: it leaves its old record for a new one, with the new errors.
    replayed = cli("quarantine", "replay", old)
    assert replayed.returncode == 0, replayed.stderr
    new = replayed.stdout.split(f"{old} -> ", 1)[1].split()[0]
    again = archive.quarantined(new)
    assert again["headers"][REPLAY_HEADER] == old and "reportId" in again["errors"]
    assert not (archive.root / "quarantine" / f"{old}.json").exists()
    listed = {r["deliveryId"]: r for r in as_json(cli("quarantine", "list", "--json"))}
    assert old not in listed and listed[new]["replayOf"] == old

    one_line_failure(cli("quarantine", "replay", "nope"))
    one_line_failure(cli("quarantine", "replay"), code=2)


def test_replay_all_archives_what_can_now_be_archived(
    cli: Callable[..., subprocess.CompletedProcess[str]],
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    tmp_path: Path,
    unique: Callable[[str], str],
) -> None:
    # Records as a worker writes them when a bug stopped it (an `internal_error`): the body
    # itself is fine, so replaying it archives the case.
    held = LocalStorage(tmp_path / "held")
    writer = Pipeline(storage=held, books=None, fetcher=None, send_download=print)  # type: ignore[arg-type]
    cfs = [unique("REPLAY") for _ in range(3)]
    for cf in cfs:
        body = samples.body(samples.case(cf, file_server.add(f"{cf}/pdf", samples.pdf())))
        writer.quarantine(
            make_delivery(body, {"Content-Type": "application/json"}),
            "internal_error",
            {"_schema": ["RuntimeError: boom"]},
        )
    assert len(as_json(cli("quarantine", "list", "--json", archive=held.root))) == 3

    result = cli("quarantine", "replay", "--all", archive=held.root)
    assert result.returncode == 0, result.stderr
    assert "replayed 3 deliveries" in result.stdout
    assert as_json(cli("quarantine", "list", "--json", archive=held.root)) == []
    for cf in cfs:
        assert archive.settled(cf)["status"] == "complete"


def test_progress_is_drawn_only_on_a_terminal() -> None:
    terminal = io.StringIO()
    out = Console(file=terminal, force_terminal=True, width=80)
    assert list(each_with_progress([1, 2, 3], "verifying", out)) == [1, 2, 3]
    assert "verifying" in terminal.getvalue()
    plain = io.StringIO()
    out = Console(file=plain, force_terminal=False)
    assert list(each_with_progress([1, 2, 3], "verifying", out)) == [1, 2, 3]
    assert plain.getvalue() == ""


def test_commands_fail_in_one_line_when_redis_is_down(tmp_path: Path) -> None:
    from casefetch_tools.redis_server import free_port

    env = worker_env(f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "casefetch_tools", "quarantine", "replay", "--all"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    one_line_failure(result)
    assert "cannot reach Redis" in result.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("worker.s3") is None,
    reason="the S3 backend (worker/s3.py) is not on this branch yet",
)
def test_commands_work_on_an_s3_archive(
    redis_server: RedisServer,
    archive: Archive,
    two_cases: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moto.server import ThreadedMotoServer

    from casefetch_tools.redis_server import free_port
    from worker.app import make_storage
    from worker.settings import WorkerSettings

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        s3_env = {
            "STORAGE_BACKEND": "s3",
            "S3_BUCKET": "casefetch-verify",
            "S3_PREFIX": "arc/",
            "S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        for name, setting in s3_env.items():
            monkeypatch.setenv(name, setting)
        import boto3

        boto3.client("s3", endpoint_url=s3_env["S3_ENDPOINT_URL"]).create_bucket(
            Bucket=s3_env["S3_BUCKET"]
        )
        s3 = make_storage(WorkerSettings.from_env())
        local = LocalStorage(archive.root)
        good, bad = two_cases
        for cf in (good, bad):  # the archive the real pipeline wrote, as it would be on S3
            folder = archive.case(cf).relative_to(archive.root).as_posix()
            for key in local.list(f"{folder}/"):
                s3.write_bytes(key, local.read_bytes(key))
        env = {**worker_env(redis_server.url, archive.root), **s3_env}

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "casefetch_tools", *args],
                env=env,
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=60,
            )

        listed = {c["cfRef"]: c["status"] for c in as_json(run("archive", "list", "--json"))}
        assert listed == {good: "complete", bad: "incomplete"}
        assert as_json(run("archive", "show", good, "--json"))["manifest"]["cfRef"] == good
        assert run("archive", "verify").returncode == 0
        s3.write_bytes(f"cases/{good}/case.pdf", b"%PDF-tampered")
        tampered = run("archive", "verify")
        assert tampered.returncode == 1
        assert f"{good}\tcase.pdf\tsha256 mismatch" in tampered.stdout
    finally:
        server.stop()
