"""Every storage write and every Redis round trip of ingest, of a batch's fetch and commit and
of the sweep, failed in turn, on the path production runs (``run_ingest``, ``fetch_batch``,
``sweep_once``), for a first delivery and for a changed re-delivery: once with an error the
worker handles (a full disk, an S3 5xx, a Redis blip), once by killing the worker right after
the step took effect. After recovery the archive must be the one a run without faults leaves:
the last accepted payload, its files, every earlier payload in history exactly once."""

from __future__ import annotations

import json
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
