"""Re-deliveries on the path production runs (tests/pipeline_harness.py): whatever order the
deliveries of one cfRef are processed in, and whatever interrupted them, case.json and the
manifest describe the payload accepted last, and every earlier payload is in history once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from casefetch.constants import INGEST_QUEUE
from casefetch.protocol import accepted_before, new_delivery_id
from casefetch_tools.redis_server import RedisServer
from tests import samples
from tests.fileserver import FileServer
from tests.pipeline_harness import Harness, harness
from tests.queues import take_message


@pytest.fixture
def pipe(tmp_path: Path, redis_server: RedisServer) -> Iterator[Harness]:
    built = harness(tmp_path / "archive", redis_server.url, db=12)
    yield built
    built.close()


def versions(file_server: FileServer, cf: str, count: int) -> list[bytes]:
    return [
        samples.body(samples.case(cf, file_server.add(f"{cf}/v{n}", samples.pdf(2000 + n))))
        for n in range(count)
    ]


def hold_back(pipe: Harness, delivery_id: str) -> bytes:
    """Take a delivery's queued message out of the queue (a worker holds it, slowly)."""
    return take_message(pipe.broker, INGEST_QUEUE, delivery_id)


def history(root: Path, cf: str) -> dict[str, bytes]:
    folder = root / "cases" / cf / "history"
    return {p.stem: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


def test_ids_sort_by_the_order_deliveries_were_accepted() -> None:
    ids = [new_delivery_id() for _ in range(2000)]  # many within one millisecond
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert accepted_before(ids[0], ids[1]) and not accepted_before(ids[1], ids[0])
    assert not accepted_before("d-1", "d-2")  # ids that say nothing: processing order decides


def test_an_older_delivery_processed_last_goes_to_history(
    pipe: Harness, tmp_path: Path, file_server: FileServer
) -> None:
    first, second = versions(file_server, "ORDER-1", 2)
    older = pipe.accept(first)
    newer = pipe.accept(second)
    held = hold_back(pipe, older["deliveryId"])
    pipe.run()  # the newer one is archived first
    pipe.broker.rpush(INGEST_QUEUE, held)
    pipe.run()

    root = tmp_path / "archive"
    manifest = json.loads((root / "cases/ORDER-1/manifest.json").read_bytes())
    assert (root / "cases/ORDER-1/case.json").read_bytes() == second
    assert manifest["deliveryId"] == newer["deliveryId"] and manifest["status"] == "complete"
    assert manifest["files"][0]["sourceUrl"].endswith("/ORDER-1/v1")
    assert history(root, "ORDER-1") == {older["deliveryId"]: first}
    assert pipe.outcomes[older["deliveryId"]] == "superseded"
    assert file_server.hits["/ORDER-1/v0"] == 0, "the older payload's files are not fetched"


def test_an_identical_newer_delivery_still_outranks_an_older_change(
    pipe: Harness, tmp_path: Path, file_server: FileServer
) -> None:
    # Accepted: A, B (a change), A again. Processed: A, the second A, then B.
    a, b = versions(file_server, "ORDER-2", 2)
    first = pipe.accept(a)
    change = pipe.accept(b)
    again = pipe.accept(a)
    held = hold_back(pipe, change["deliveryId"])
    pipe.run()
    assert pipe.outcomes[again["deliveryId"]] == "duplicate"
    pipe.broker.rpush(INGEST_QUEUE, held)
    pipe.run()

    root = tmp_path / "archive"
    assert (root / "cases/ORDER-2/case.json").read_bytes() == a
    manifest = json.loads((root / "cases/ORDER-2/manifest.json").read_bytes())
    assert manifest["deliveryId"] == first["deliveryId"]
    assert history(root, "ORDER-2") == {change["deliveryId"]: b}


def test_an_interrupted_change_is_finished_and_no_history_is_overwritten(
    pipe: Harness, tmp_path: Path, file_server: FileServer
) -> None:
    """The issue's first case: the manifest write of change B fails once (a full disk)."""
    a, b, c = versions(file_server, "ORDER-3", 3)
    root = tmp_path / "archive"
    first = pipe.accept(a)
    pipe.run()
    manifest_path = root / "cases/ORDER-3/manifest.json"
    # B's case.json is written, then its manifest write fails (here: the worker dies).
    second = pipe.accept(b)
    (root / "cases/ORDER-3/history").mkdir()
    (root / "cases/ORDER-3/history" / f"{first['deliveryId']}.json").write_bytes(a)
    (root / "cases/ORDER-3/case.json").write_bytes(b)
    assert json.loads(manifest_path.read_bytes())["deliveryId"] == first["deliveryId"]
    pipe.run()  # B retried
    manifest = json.loads(manifest_path.read_bytes())
    assert manifest["deliveryId"] == second["deliveryId"] and manifest["status"] == "complete"
    assert manifest["files"][0]["sourceUrl"].endswith("/ORDER-3/v1")
    assert pipe.outcomes[second["deliveryId"]] == "planned"

    third = pipe.accept(c)
    pipe.run()
    assert (root / "cases/ORDER-3/case.json").read_bytes() == c
    assert json.loads(manifest_path.read_bytes())["deliveryId"] == third["deliveryId"]
    assert history(root, "ORDER-3") == {first["deliveryId"]: a, second["deliveryId"]: b}
