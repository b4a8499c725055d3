"""Pages and the catalog as the real pipeline writes them: index.html on settle, rewritten on
change, never in the manifest; the catalog row; a case of 1,200 items; ``archive reindex``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from casefetch_tools.redis_server import RedisServer
from tests import samples
from tests.archive_view import Archive
from tests.fileserver import FileServer
from tests.paths import ROOT
from tests.processes import ReceiverProcess, WorkerProcess, worker_env
from tests.waiting import wait_for
from worker.catalog import Catalog, Query

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(redis_server: RedisServer, archive_dir: Path) -> Cli:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "casefetch_tools", *args],
            capture_output=True,
            text=True,
            env=worker_env(redis_server.url, archive_dir),
            cwd=ROOT,
            timeout=120,
        )

    return run


def test_a_settled_case_has_its_page_and_its_catalog_row(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    archive_dir: Path,
    unique: Callable[[str], str],
    cli: Cli,
) -> None:
    cf = unique("PAGE")
    pdf = file_server.add(f"{cf}/pdf", samples.pdf())
    image = file_server.add(f"{cf}/img", samples.png(seed=5))
    items = [
        samples.item("IT-1", image, description="first look", data="Front door"),
        samples.item("IT-2", None, step="NUMBER_FIELD", data="17"),
    ]
    assert receiver.post(samples.body(samples.case(cf, pdf, items)))[0] == 202
    manifest = archive.settled(cf)
    page = (archive.case(cf) / "index.html").read_text()
    assert "first look" in page and "Front door" in page and "17" in page
    assert 'src="items/001-IT-1.png"' in page and "index.html" not in json.dumps(manifest)
    assert cli("archive", "verify", cf).returncode == 0

    rows, total = Catalog(archive_dir / ".index.sqlite").search(Query(text=cf))
    assert total == 1 and rows[0].status == "complete" and rows[0].filesStored == 2
    assert rows[0].createdAt == "2026-11-28T10:00:00.000Z"

    items[0]["description"] = "second look"
    assert receiver.post(samples.body(samples.case(cf, pdf, items)))[0] == 202
    wait_for(
        lambda: "second look" in (archive.case(cf) / "index.html").read_text(),
        message="the page to be rewritten",
    )
    assert "first look" not in (archive.case(cf) / "index.html").read_text()


def test_a_case_of_1200_items_maps_every_item_to_its_own_file(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    unique: Callable[[str], str],
    cli: Cli,
) -> None:
    cf = unique("BIG")
    pictured = {1: 11, 100: 12, 999: 13, 1000: 14, 1200: 15}
    items = [
        samples.item(
            f"IT-{n}",
            file_server.add(f"{cf}/{n}", samples.png(seed=pictured[n])) if n in pictured else None,
            step="PHOTOGRAPHY" if n in pictured else "TEXT_FIELD",
            data=f"value {n}",
        )
        for n in range(1, 1201)
    ]
    pdf = file_server.add(f"{cf}/pdf", samples.pdf())
    assert receiver.post(samples.body(samples.case(cf, pdf, items)))[0] == 202
    archive.settled(cf, timeout=60)

    shown = json.loads(cli("archive", "show", cf, "--json").stdout)
    files = {item["position"]: item["file"] for item in shown["items"]}
    assert len(files) == 1200
    assert {n: f["path"] for n, f in files.items() if f} == {
        n: f"items/{n:03d}-IT-{n}.png" for n in pictured
    }
    assert {n: f["sha256"] for n, f in files.items() if f} == {
        n: samples.sha(samples.png(seed=seed)) for n, seed in pictured.items()
    }
    table = cli("archive", "show", cf).stdout
    assert "items/1000-IT-1000.png (stored)" in table

    page = (archive.case(cf) / "index.html").read_text()
    for n in pictured:
        section = page.split(f'id="item-{n}"', 1)[1].split("</section>", 1)[0]
        assert f'src="items/{n:03d}-IT-{n}.png"' in section, n
    assert "<img" not in page.split('id="item-1001"', 1)[1].split("</section>", 1)[0]


def test_reindex_rebuilds_a_lost_catalog(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    archive_dir: Path,
    unique: Callable[[str], str],
    cli: Cli,
) -> None:
    cf = unique("REINDEX")
    body = samples.body(samples.case(cf, file_server.add(f"{cf}/pdf", samples.pdf())))
    assert receiver.post(body)[0] == 202
    archive.settled(cf)
    catalog = Catalog(archive_dir / ".index.sqlite")
    catalog.path.unlink()
    page = archive.case(cf) / "index.html"
    written = page.read_bytes()
    page.unlink()  # as in an archive from before pages
    result = cli("archive", "reindex", "--pages")
    assert result.returncode == 0, result.stderr
    assert "catalogued" in result.stdout and "wrote 1 missing page(s)" in result.stdout
    assert catalog.search(Query(text=cf))[1] == 1
    assert page.read_bytes() == written
