"""``python -m bench.browse``: the archive browser's list and search on a large archive.

Builds an archive of N cases (10,000 by default: manifests and payloads only, written
directly, without fsync), rebuilds the catalog as ``casefetch archive reindex`` does, starts
``casefetch archive serve`` and times list, filter, search and deep-page requests over HTTP
from this process; then the cost a settle adds (one page rendered, one catalog row).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import urllib3

from bench.harness import ROOT
from casefetch_tools.redis_server import free_port
from worker.catalog import Catalog, row_for
from worker.page import render_case
from worker.storage import LocalStorage

STATUSES = ("complete", "complete", "complete", "incomplete")


def build(root: Path, count: int, items: int = 8) -> None:
    for n in range(count):
        cf = f"CF-{n:06d}"
        folder = root / "cases" / cf
        (folder / "items").mkdir(parents=True)
        day = 1 + n % 28
        files = [
            {
                "path": "case.pdf",
                "kind": "case_pdf",
                "status": "stored",
                "sha256": "0" * 64,
                "bytes": 40_000,
                "contentType": "application/pdf",
                "error": None,
                "sourceUrl": f"https://platform.example/{cf}.pdf",
            }
        ]
        files += [
            {
                "path": f"items/{i:03d}-IT-{i}.jpg",
                "kind": "item_image",
                "item": i,
                "itemCfRef": f"IT-{i}",
                "stepAction": "PHOTOGRAPHY",
                "status": "stored",
                "sha256": "1" * 64,
                "bytes": 200_000,
                "contentType": "image/jpeg",
                "error": None,
                "sourceUrl": f"https://platform.example/{cf}/{i}.jpg",
            }
            for i in range(1, items + 1)
        ]
        manifest = {
            "cfRef": cf,
            "reportId": f"R-{n:06d}",
            "status": STATUSES[n % 4],
            "updatedAt": f"2026-11-{day:02d}T10:{n % 60:02d}:{n % 59:02d}Z",
            "deliveryId": f"d-{n}",
            "files": files,
            "warnings": [],
        }
        payload = {
            "cfRef": cf,
            "reportId": f"R-{n:06d}",
            "createdAt": "2026-11-01T09:00:00Z",
            "caseUrl": f"https://platform.example/{cf}.pdf",
            "items": [
                {
                    "cfRef": f"IT-{i}",
                    "stepAction": "PHOTOGRAPHY",
                    "createdAt": "2026-11-01T09:00:00Z",
                    "data": f"photo {i}",
                }
                for i in range(1, items + 1)
            ],
        }
        (folder / "manifest.json").write_text(json.dumps(manifest))
        (folder / "case.json").write_text(json.dumps(payload))


def timed(call: Callable[[], object], rounds: int) -> list[float]:
    spent = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        spent.append((time.perf_counter() - started) * 1000)
    return spent


def serve(root: Path, catalog: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ARCHIVE_DIR": str(root),
        "ARCHIVE_INDEX": str(catalog),
        "STORAGE_BACKEND": "local",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "casefetch_tools", "archive", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if (
                urllib3.request(
                    "GET", f"http://127.0.0.1:{port}/healthz", retries=False, timeout=1
                ).status
                == 200
            ):
                return process
        except urllib3.exceptions.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("archive serve did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="casefetch-browse-") as tmp:
        root = Path(tmp) / "archive"
        started = time.perf_counter()
        build(root, args.cases)
        print(f"built {args.cases} cases in {time.perf_counter() - started:.1f} s")
        catalog = Catalog(Path(tmp) / "index.sqlite")
        started = time.perf_counter()
        catalog.rebuild(LocalStorage(root))
        print(f"reindex: {time.perf_counter() - started:.1f} s")
        port = free_port()
        process = serve(root, catalog.path, port)
        http = urllib3.PoolManager(maxsize=1)
        base = f"http://127.0.0.1:{port}"
        try:
            for label, path in (
                ("list, first page", "/"),
                ("list, page 150", "/?page=150"),
                ("filter status + dates", "/?status=incomplete&since=2026-11-10&until=2026-11-20"),
                ("search by cfRef", "/?q=CF-004242"),
                ("search by reportId part", "/?q=R-0099"),
                ("search, no match", "/?q=nothing-like-this"),
            ):

                def get(path: str = path) -> None:
                    response = http.request("GET", base + path, retries=False)
                    assert response.status == 200, (path, response.status)

                get()
                spent = sorted(timed(get, args.rounds))
                print(
                    f"{label:26} median {statistics.median(spent):6.1f} ms   "
                    f"p95 {spent[int(len(spent) * 0.95) - 1]:6.1f} ms   "
                    f"max {spent[-1]:6.1f} ms"
                )
        finally:
            process.terminate()
            process.wait(timeout=20)
        settle_costs(root, catalog, args.rounds)


def settle_costs(root: Path, catalog: Catalog, rounds: int) -> None:
    """What a settle adds: the page of an ordinary case and of 1,200 items, one row."""
    storage = LocalStorage(root)
    manifest = json.loads(storage.read_bytes("cases/CF-000001/manifest.json"))
    payload = json.loads(storage.read_bytes("cases/CF-000001/case.json"))
    big_root = root.parent / "big"
    build(big_root, 1, items=1200)
    big_manifest = json.loads((big_root / "cases/CF-000000/manifest.json").read_text())
    big_payload = json.loads((big_root / "cases/CF-000000/case.json").read_text())
    for label, call in (
        ("page, 8 items", lambda: render_case(manifest, payload)),
        ("page, 1,200 items", lambda: render_case(big_manifest, big_payload)),
        ("catalog row", lambda: catalog.record(row_for("cases/CF-000001", manifest, payload))),
    ):
        spent = timed(call, rounds)
        print(f"{label:26} median {statistics.median(spent):6.1f} ms")


if __name__ == "__main__":
    main()
