"""Every storage write and every Redis round trip of ingest, of a batch's fetch and commit and
of the sweep, failed in turn, on the path production runs (``run_ingest``, ``fetch_batch``,
``sweep_once``), for a first delivery and for a changed re-delivery: once with an error the
worker handles (a full disk, an S3 5xx, a Redis blip), once by killing the worker right after
the step took effect. After recovery the archive must be the one a run without faults leaves:
the last accepted payload, its files, every earlier payload in history exactly once."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from casefetch.constants import ACTIVE_CASES_KEY, INBOX_KEY
from casefetch.protocol import new_delivery_id
from casefetch_tools.redis_server import RedisServer
from tests import samples
from tests.fileserver import FileServer
from tests.pipeline_harness import Faults, harness
from worker import storage

CF = "CRASH-1"


@pytest.fixture(scope="module")
def payloads(file_server: FileServer) -> dict[str, bytes]:
    """A first payload, and a change of it: a new PDF, one image kept (same URL), one dropped,
    one added."""
    pdf1 = file_server.add("crash/pdf1", samples.pdf(3000))
    pdf2 = file_server.add("crash/pdf2", samples.pdf(4000))
    a = file_server.add("crash/a", samples.png(seed=1))
    b = file_server.add("crash/b", samples.jpeg(1500, seed=2))
    c = file_server.add("crash/c", samples.png(seed=3))
    first = samples.case(CF, pdf1, [samples.item("A", a), samples.item("B", b)])
    changed = samples.case(CF, pdf2, [samples.item("A", a), samples.item("C", c)])
    return {"first": samples.body(first), "changed": samples.body(changed)}


def snapshot(root: Path) -> dict[str, Any]:
    """The archive as an operator sees it: every file's bytes (manifests without the times
    and try counts that differ from run to run, pages without the time). Temporary files of
    killed writers are the sweep's to remove later, not part of the archive."""
    found: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if not path.is_file() or relative.startswith(".tmp/"):
            continue
        if path.name == "manifest.json":
            manifest = json.loads(path.read_bytes())
            manifest.pop("updatedAt")
            for entry in manifest["files"]:
                entry.pop("attempts")
            found[relative] = manifest
        elif path.name == "index.html":
            updated = json.loads((path.parent / "manifest.json").read_bytes())["updatedAt"]
            found[relative] = path.read_bytes().replace(updated.encode(), b"(time)")
        else:
            found[relative] = path.read_bytes()
    return found


Scenario = Callable[[Path, Faults | None], dict[str, Any]]


@pytest.fixture
def scenario(
    redis_server: RedisServer, payloads: dict[str, bytes]
) -> Iterator[Callable[[str, bool], Scenario]]:
    made: list[Any] = []

    def make(name: str, fetch_first: bool) -> Scenario:
        ids = sorted(new_delivery_id() for _ in range(2))  # the same ids in every run

        def run(root: Path, faults: Faults | None) -> dict[str, Any]:
            pipe = harness(root, redis_server.url, db=11, faults=faults)
            pipe.fetch_first = fetch_first
            made.append(pipe)
            if name == "changed re-delivery":
                pipe.accept(payloads["first"], ids[0])
                pipe.run()
            if faults is not None:
                faults.armed = True
            pipe.accept(payloads[name.replace(" re-delivery", "").replace(" delivery", "")], ids[1])
            pipe.run()
            if faults is not None:
                faults.armed = False
            assert pipe.broker.hlen(INBOX_KEY) == 0, "an accepted delivery was left behind"
            assert pipe.broker.zcard(ACTIVE_CASES_KEY) == 0, "a case was left pending"
            pipe.close()
            return {"archive": snapshot(root), "deaths": pipe.deaths, "ids": ids}

        return run

    yield make
    for pipe in made:
        pipe.close()


@pytest.mark.parametrize("worker", ["all queues", "ingest apart"])
@pytest.mark.parametrize("name", ["first delivery", "changed re-delivery"])
def test_every_crash_point_recovers_to_the_archive_of_the_last_payload(
    name: str,
    worker: str,
    scenario: Callable[[str, bool], Scenario],
    tmp_path: Path,
    payloads: dict[str, bytes],
    report_line: Callable[[str], None],
) -> None:
    # "all queues": ingest fetches the case's first batch itself; "ingest apart": it hands
    # every batch to the download queue (a worker started with --queues casefetch.ingest).
    run = scenario(name, worker == "all queues")
    clean = run(tmp_path / "clean", None)
    expected = clean["archive"]
    earlier, last = clean["ids"]
    case = f"cases/{CF}"
    # What the archive of the last payload is, spelled out once.
    assert expected[f"{case}/manifest.json"]["status"] == "complete"
    assert expected[f"{case}/manifest.json"]["deliveryId"] == last
    history = sorted(k for k in expected if "/history/" in k)
    if name == "first delivery":
        assert expected[f"{case}/case.json"] == payloads["first"] and history == []
    else:
        assert expected[f"{case}/case.json"] == payloads["changed"]
        assert history == [f"{case}/history/{earlier}.json"]
        assert expected[history[0]] == payloads["first"]
        assert f"{case}/items/002-B.jpg" not in expected  # dropped by the change

    points: list[str] = []
    for mode in ("error", "crash"):
        at = 0
        while True:
            at += 1
            faults = Faults(at=at, mode=mode)
            result = run(tmp_path / f"{mode}-{at}", faults)
            if faults.fired is None:
                break  # past the last step: every one was failed in turn
            points.append(faults.fired)
            assert result["archive"] == expected, f"after {faults.fired}"
            assert (mode == "crash") == (result["deaths"] > 0), faults.fired
    steps = len(points) // 2
    assert steps >= 20, points
    report_line(
        f"crash points, {name}, {worker}: {len(points)} ({steps} steps x error/crash),"
        f" each recovered to the archive of the last payload"
    )
    print("\n".join(points))


def test_every_rename_is_made_durable_by_one_sync_of_its_folder_per_step(
    redis_server: RedisServer,
    payloads: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A power cut keeps only what a folder sync covered: every object put in place must be
    # followed by a sync of its folder, and a step (ingest, a batch's commit, the settle)
    # syncs each folder it wrote once (docs/benchmarks.md, issue 18).
    events: list[tuple[str, str]] = []
    replace, fsync_dir = os.replace, storage._fsync_dir

    def renamed(source: Any, target: Any) -> None:
        replace(source, target)
        events.append(("rename", os.path.dirname(target)))

    def synced(path: Path) -> None:
        fsync_dir(path)
        events.append(("sync", str(path)))

    monkeypatch.setattr(os, "replace", renamed)
    monkeypatch.setattr(storage, "_fsync_dir", synced)
    root = tmp_path / "archive"
    pipe = harness(root, redis_server.url, db=11)
    try:
        pipe.accept(payloads["first"])
        pipe.run()
    finally:
        pipe.close()
    assert pipe.manifest(f"cases/{CF}") is not None
    for at, (kind, folder) in enumerate(events):
        if kind == "rename":
            assert ("sync", folder) in events[at + 1 :], f"rename {at} into {folder}"
    case = str(root.resolve() / "cases" / CF)
    # Ingest (case.json, pending manifest), the batch (case.pdf), the settle (page, manifest).
    assert events.count(("sync", case)) == 3
    assert events.count(("sync", f"{case}/items")) == 1
