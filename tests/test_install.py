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
from casefetch_tools.redis_server import RedisServer, free_port
from tests.credentials import TOKEN
from tests.fileserver import FileServer
from tests.paths import ROOT
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


class Process:
    """One console-script process run from the installed virtualenv, away from the sources
    (so nothing is imported from the checkout)."""

    def __init__(self, venv: Path, directory: Path, env: dict[str, str], *args: str) -> None:
        self.log = directory / f"{args[0]}.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(venv / "bin" / "casefetch"), *args],
                env=env,
                cwd=directory,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"exited {self.process.returncode}:\n{self.output()[-4000:]}")
        return True

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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
    port = free_port()
    processes = [
        Process(installed, tmp_path, env, "worker", "--concurrency", "2"),
        Process(installed, tmp_path, env, "receiver", "--host", "127.0.0.1", "--port", str(port)),
    ]
    try:
        worker, receiver = processes
        wait_for(
            lambda: worker.alive() and " ready." in worker.output(),
            timeout=60,
            message="the installed worker to be ready",
        )

        def serving() -> bool:
            receiver.alive()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                    return True
            except OSError:
                return False

        wait_for(serving, timeout=30, message="the installed receiver to serve")
        yield port, archive
        for process in processes:
            assert "Traceback" not in process.output(), process.output()[-4000:]
    finally:
        for process in processes:
            process.stop()
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
