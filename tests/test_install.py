"""The package as users install it: ``pip install .`` into a fresh virtualenv, without the
test or dev extras, gives a receiver and a worker that archive a case.

The development virtualenv holds every test tool, and those can hide a dependency the
package forgot to declare (kombu's Redis transport needs ``packaging``, which pytest pulled
in). Here nothing but the package's own dependencies is installed, at the locked versions.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from casefetch_tools import samples as sample_files
from casefetch_tools.demo import certificate_pdf
from casefetch_tools.redis_server import RedisServer
from tests.credentials import TOKEN
from tests.fileserver import FileServer
from tests.paths import ROOT
from tests.processes import ReceiverProcess, WorkerProcess
from tests.waiting import wait_for
from worker.archive import case_dir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: What a clean clone holds that the build needs (tests and tooling are not installed).
SOURCES = ("pyproject.toml", "README.md", "casefetch", "casefetch_tools", "receiver", "worker")


def _constraints(lock: Path, target: Path) -> Path:
    """The lock's pins without their hashes: pip resolves pyproject.toml's dependencies
    itself, as `pip install .` does, but lands on the tested versions."""
    pins = re.findall(r"^([A-Za-z0-9_.\-\[\]]+==[^\s;\\]+)(\s*;[^\\\n]+)?", lock.read_text(), re.M)
    target.write_text("".join(f"{pin}{marker}\n" for pin, marker in pins))
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("install")
    source = directory / "source"
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(path, source / name)
    venv = directory / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    constraints = _constraints(ROOT / "requirements.lock", directory / "constraints.txt")
    result = subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--quiet",
            "--constraint",
            str(constraints),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    check = subprocess.run(
        [str(venv / "bin" / "pip"), "check"], capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stdout
    freeze = subprocess.run(
        [str(venv / "bin" / "pip"), "freeze"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.lower()
    for tool in ("pytest", "hypothesis", "moto", "mypy", "ruff"):
        assert f"\n{tool}==" not in f"\n{freeze}", f"{tool} is not a dependency"
    return venv


@pytest.fixture
def pipeline(
    installed: Path, tmp_path: Path, file_server: FileServer
) -> Iterator[tuple[int, Path]]:
    redis = RedisServer(tmp_path / "redis").start()
    archive = tmp_path / "archive"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "REDIS_URL": redis.url,
        "ARCHIVE_DIR": str(archive),
        "WEBHOOK_BEARER_TOKENS": TOKEN,
        "DOWNLOAD_ALLOW_PRIVATE_NETWORKS": "true",
        "WORKER_METRICS_PORT": "0",
    }
    # The installed console script, run away from the sources: nothing is imported from
    # the checkout.
    command = [str(installed / "bin" / "casefetch")]
    worker = WorkerProcess(
        env, tmp_path / "worker.log", command=command, cwd=tmp_path, concurrency=2
    )
    receiver = ReceiverProcess(env, tmp_path / "receiver.log", command=command, cwd=tmp_path)
    try:
        worker.start()
        receiver.start()
        yield receiver.port, archive
        for log in (worker.log_path, receiver.log_path):
            output = log.read_text(errors="replace")
            assert "Traceback" not in output, output[-4000:]
    finally:
        worker.stop()
        receiver.stop()
        redis.stop()


def test_a_clean_install_archives_a_case(
    pipeline: tuple[int, Path], file_server: FileServer
) -> None:
    port, archive = pipeline
    pdf, png = certificate_pdf("CF-INSTALL", "R-1"), sample_files.png(160, 120, 7)
    payload = {
        "cfRef": "CF-INSTALL",
        "reportId": "R-1",
        "caseUrl": file_server.add("install/case.pdf", pdf),
        "createdAt": "2026-12-07T10:00:00.000Z",
        "items": [
            {
                "cfRef": "IT-1",
                "createdAt": "2026-12-07T10:00:00.000Z",
                "stepAction": "PHOTOGRAPHY",
                "imageUrl": file_server.add("install/1.png", png),
            }
        ],
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks",
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
    manifest_path = archive / case_dir("CF-INSTALL") / "manifest.json"

    def complete() -> dict[str, object] | None:
        if not manifest_path.exists():
            return None
        manifest: dict[str, object] = json.loads(manifest_path.read_bytes())
        return manifest if manifest["status"] != "pending" else None

    manifest = wait_for(complete, timeout=60, message="the case to settle")
    assert manifest["status"] == "complete", manifest
    folder = archive / case_dir("CF-INSTALL")
    assert (folder / "case.pdf").read_bytes() == pdf
    assert (folder / "items" / "001-IT-1.png").read_bytes() == png
