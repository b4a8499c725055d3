"""Slow and broken file hosts: each misbehaviour is retried or failed as it should be."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import samples
from tests.fileserver import Fault, FileServer
from tests.samples import closed_after_test, fetch_file
from worker.download import Fetcher
from worker.errors import DownloadError
from worker.settings import DownloadSettings
from worker.sniff import FileKind
from worker.storage import LocalStorage


def fetch(url: str, tmp_path: Path, **overrides: object) -> tuple[object, list[float]]:
    slept: list[float] = []
    values: dict[str, Any] = {
        "allow_private_networks": True,
        "max_attempts": 3,
        "timeout_seconds": 0.3,
        "backoff_base_seconds": 0.01,
    }
    values.update(overrides)
    fetcher = closed_after_test(Fetcher(DownloadSettings(**values), sleep=slept.append))
    storage = LocalStorage(tmp_path)
    try:
        return fetch_file(fetcher, url, FileKind.CASE_PDF, storage, lambda t: "f.pdf"), slept
    except DownloadError as exc:
        return exc, slept


def test_a_host_that_stalls_between_bytes_times_out_and_is_retried(
    file_server: FileServer, tmp_path: Path
) -> None:
    url = file_server.add("hosts/stall", samples.pdf(200_000), chunk_delay=1.0)
    outcome, slept = fetch(url, tmp_path)
    assert isinstance(outcome, DownloadError)
    assert "timed out" in outcome.message.lower()
    assert getattr(outcome, "attempts", 0) == 3 and len(slept) == 2
    assert not (tmp_path / "f.pdf").exists()


def test_a_connection_reset_is_retried(file_server: FileServer, tmp_path: Path) -> None:
    pdf = samples.pdf(100_000)
    url = file_server.add("hosts/reset", pdf, faults=[Fault(reset_after=10_000)])
    outcome, _ = fetch(url, tmp_path)
    assert not isinstance(outcome, DownloadError), outcome
    assert (tmp_path / "f.pdf").read_bytes() == pdf
    assert file_server.hits["/hosts/reset"] == 2


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses(file_server: FileServer, tmp_path: Path, status: int) -> None:
    url = file_server.add(f"hosts/status-{status}", samples.pdf(), faults=[Fault(status=status)])
    outcome, _ = fetch(url, tmp_path)
    assert not isinstance(outcome, DownloadError), outcome
    assert getattr(outcome, "attempts", 0) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
def test_other_client_errors_fail_at_once(
    file_server: FileServer, tmp_path: Path, status: int
) -> None:
    url = file_server.add(f"hosts/status-{status}", samples.pdf(), always=Fault(status=status))
    outcome, slept = fetch(url, tmp_path)
    assert isinstance(outcome, DownloadError) and getattr(outcome, "attempts", 0) == 1
    assert f"HTTP {status}" in outcome.message and slept == []


def test_retry_after_date_and_cap(file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.add(
        "hosts/429-long", samples.pdf(), faults=[Fault(status=429, headers={"Retry-After": "3600"})]
    )
    outcome, slept = fetch(url, tmp_path, backoff_max_seconds=2.0)
    assert not isinstance(outcome, DownloadError)
    assert slept == [2.0]  # honoured, but never past the backoff cap
