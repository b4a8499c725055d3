"""The demo platform (``casefetch demo``): its files, and the command against the real pipeline."""

from __future__ import annotations

import re
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from casefetch_tools import demo
from casefetch_tools.redis_server import free_port
from tests.archive_view import Archive
from tests.paths import ROOT
from tests.processes import ReceiverProcess, WorkerProcess, receiver_env
from tests.samples import ends_whole
from tests.waiting import wait_for
from worker.sniff import sniff


def test_demo_files_are_whole_files_of_their_type() -> None:
    files = demo.case_files("DEMO-x-1")
    for name, (data, content_type) in files.items():
        found = sniff(data[:4096])
        assert found is not None and found.content_type == content_type, name
        assert ends_whole(found, data), name
    assert demo.case_files("DEMO-x-1") == files, "the same case always gets the same bytes"

    pdf = files["report.pdf"][0]
    startxref = int(pdf.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    assert pdf[startxref:].startswith(b"xref\n")
    offsets = re.findall(rb"(\d{10}) 00000 n ", pdf)
    for number, offset in enumerate(offsets, start=1):
        assert pdf[int(offset) :].startswith(b"%d 0 obj" % number)
    assert b"(Certificate DEMO-x-1)" in pdf

    png = files["photo.png"][0]
    position = 8
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        tag_and_data = png[position + 4 : position + 8 + length]
        (crc,) = struct.unpack(">I", png[position + 8 + length : position + 12 + length])
        assert zlib.crc32(tag_and_data) & 0xFFFFFFFF == crc
        position += 12 + length

    jpeg = files["signature.jpg"][0]
    assert jpeg.startswith(b"\xff\xd8\xff\xe0") and jpeg.endswith(b"\xff\xd9")
    assert b"\xff\xc0" in jpeg and b"\xff\xda" in jpeg  # baseline frame, one scan


def test_demo_fills_the_archive_through_the_real_pipeline(
    receiver: ReceiverProcess, worker: WorkerProcess, archive: Archive, tmp_path: Path
) -> None:
    log_path = tmp_path / "demo.log"
    env = receiver_env(receiver.env["REDIS_URL"])  # the receiver's credentials: HMAC first
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "casefetch_tools",
                "demo",
                "--receiver",
                f"{receiver.url}/webhooks",
                "--port",
                str(free_port()),
                "--cases",
                "2",
                "--interval",
                "0",
            ],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def sent() -> list[str]:
            if process.poll() is not None:
                raise AssertionError(f"demo exited:\n{log_path.read_text()}")
            found = re.findall(r"sent case (\S+): delivery \S+", log_path.read_text())
            return found if len(found) == 2 else []

        cf_refs = wait_for(sent, message="the demo to send its cases")
        for cf in cf_refs:
            manifest = archive.settled(cf)
            assert manifest["status"] == "complete", manifest
            folder = archive.case(cf)
            files = demo.case_files(cf)
            assert (folder / "case.pdf").read_bytes() == files["report.pdf"][0]
            assert (folder / f"items/001-{cf}-PHOTO.png").read_bytes() == files["photo.png"][0]
            assert (folder / f"items/002-{cf}-SIGN.jpg").read_bytes() == files["signature.jpg"][0]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log_path.read_text()
    assert "Traceback" not in log_path.read_text()


def test_demo_without_credentials_says_so(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in receiver_env("redis://127.0.0.1:1/0").items()
        if not k.startswith("WEBHOOK_")
    }
    result = subprocess.run(
        [sys.executable, "-m", "casefetch_tools", "demo", "--port", "0"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no credential" in result.stderr and "Traceback" not in result.stderr


def test_sender_gives_up_on_an_unreachable_receiver() -> None:
    url = f"http://127.0.0.1:{free_port()}/webhooks"
    with pytest.raises(demo.DemoError, match="cannot reach"):
        demo.send(url, b"{}", demo.Credentials(bearer="t"), timeout=0.0, sleep=lambda _: None)
