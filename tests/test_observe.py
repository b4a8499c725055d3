"""Metrics and logs, read from the real receiver and worker after real traffic."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
import redis
import urllib3
from prometheus_client.parser import text_string_to_metric_families

from casefetch import logs
from tests import samples
from tests.archive_view import Archive
from tests.credentials import TOKEN
from tests.fileserver import Fault, FileServer
from tests.paths import ROOT
from tests.processes import ReceiverProcess, WorkerProcess
from tests.test_pipeline import enqueue_raw
from tests.waiting import wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    response = urllib3.request("GET", url, retries=False, timeout=5)
    assert response.status == 200
    found: Samples = {}
    for family in text_string_to_metric_families(response.data.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def families(url: str) -> set[str]:
    """Names of the metric families served, even those with no sample yet."""
    text = urllib3.request("GET", url, retries=False, timeout=5).data.decode()
    return {family.name for family in text_string_to_metric_families(text)}


def value(samples_: Samples, name: str, **labels: str) -> float:
    return samples_.get((name, tuple(sorted(labels.items()))), 0.0)


def worker_metrics_url(worker: WorkerProcess) -> str:
    return f"http://127.0.0.1:{worker.env['WORKER_METRICS_PORT']}/metrics"


def test_receiver_metrics_move_with_traffic(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    unique: Callable[[str], str],
) -> None:
    before = scrape(f"{receiver.url}/metrics")
    cf = unique("MET")
    body = samples.body(samples.case(cf, file_server.add(f"{cf}/pdf", samples.pdf())))
    assert receiver.post(body)[0] == 202
    assert (
        receiver.post(body, {"Authorization": "Bearer wrong", "Content-Type": "application/json"})[
            0
        ]
        == 401
    )
    assert (
        receiver.post(
            body, {"Authorization": "Basic bm9ib2R5Om5vcGU=", "Content-Type": "application/json"}
        )[0]
        == 401
    )
    after = scrape(f"{receiver.url}/metrics")

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("casefetch_receiver_requests_total", route="/webhooks", status="202") == 1
    assert moved("casefetch_receiver_requests_total", route="/webhooks", status="401") == 2
    assert moved("casefetch_receiver_auth_failures_total", scheme="Bearer") == 1
    assert moved("casefetch_receiver_auth_failures_total", scheme="Basic") == 1
    assert moved("casefetch_receiver_enqueue_seconds_count") == 1
    assert moved("casefetch_receiver_payload_bytes_sum") == len(body)
    archive.settled(cf)


def test_worker_metrics_move_with_traffic(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    redis_client: redis.Redis,
    unique: Callable[[str], str],
) -> None:
    url = worker_metrics_url(worker)
    before = scrape(url)
    cf, broken = unique("MET"), unique("MET")
    pdf, png = samples.pdf(30_000), samples.png(seed=9)
    items = [
        samples.item("IT-1", file_server.add(f"{cf}/img", png, faults=[Fault(503)])),
        samples.item("IT-2", file_server.add(f"{cf}/gone", png, always=Fault(404))),
    ]
    assert (
        receiver.post(samples.body(samples.case(cf, file_server.add(f"{cf}/pdf", pdf), items)))[0]
        == 202
    )
    assert (
        receiver.post(
            samples.body(
                samples.case(
                    broken, file_server.add(f"{broken}/pdf", samples.pdf(), always=Fault(410))
                )
            )
        )[0]
        == 202
    )
    quarantined = enqueue_raw(redis_client, b"{not json")
    archive.settled(cf)
    archive.settled(broken)
    archive.quarantined(quarantined)

    def after() -> Samples | None:
        # A delivery is counted when its ingest task ends, which can be after its case has
        # settled (the task fetches the first files itself): wait for all three.
        found = scrape(url)

        def grew(outcome: str) -> float:
            return value(found, "casefetch_worker_deliveries_total", outcome=outcome) - value(
                before, "casefetch_worker_deliveries_total", outcome=outcome
            )

        return found if grew("quarantined") >= 1 and grew("planned") >= 2 else None

    now = wait_for(after, message="the worker's counters to move")

    def moved(name: str, **labels: str) -> float:
        return value(now, name, **labels) - value(before, name, **labels)

    assert moved("casefetch_worker_deliveries_total", outcome="planned") >= 2
    assert moved("casefetch_worker_cases_total", outcome="incomplete") >= 2
    assert moved("casefetch_worker_files_total", outcome="stored", kind="case_pdf") >= 1
    assert moved("casefetch_worker_files_total", outcome="stored", kind="item_image") >= 1
    assert moved("casefetch_worker_files_total", outcome="failed", kind="item_image") >= 1
    assert moved("casefetch_worker_files_total", outcome="failed", kind="case_pdf") >= 1
    assert moved("casefetch_worker_downloaded_bytes_total") >= len(pdf) + len(png)
    assert moved("casefetch_worker_download_seconds_count", outcome="stored") >= 2
    assert moved("casefetch_worker_download_retries_total") >= 1
    for queue in ("casefetch.ingest", "casefetch.download"):
        assert ("casefetch_queue_depth", (("queue", queue),)) in now
    assert value(now, "casefetch_quarantine_records") >= 1
    assert ("casefetch_cases_in_progress", ()) in now


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_one_json_line_per_delivery_and_file_follows_a_case(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    unique: Callable[[str], str],
) -> None:
    cf = unique("LOG")
    items = [samples.item("IT-1", file_server.add(f"{cf}/img", samples.png()))]
    status, answer = receiver.post(
        samples.body(
            samples.case(
                cf, file_server.add(f"{cf}/pdf", samples.pdf()) + "?X-Signature=s3cr3t", items
            )
        )
    )
    assert status == 202
    delivery_id = answer["deliveryId"]
    archive.settled(cf)

    def receiver_lines() -> list[dict[str, Any]]:
        return [
            line
            for line in json_lines(receiver.log_path.read_text())
            if line.get("deliveryId") == delivery_id
        ]

    # The receiver writes its lines in batches, up to 50 ms after the answer: the case can
    # settle before that.
    received = wait_for(receiver_lines, message="the receiver's log line")
    assert [line["msg"] for line in received] == ["delivery accepted"]
    assert received[0]["cfRef"] == cf and received[0]["level"] == "info" and received[0]["ts"]

    def worker_lines() -> list[dict[str, Any]] | None:
        # "delivery ingested" is logged when the ingest task ends, which can be after the
        # case settled (the task fetches the first files itself).
        lines = [line for line in json_lines(worker.log()) if line.get("cfRef") == cf]
        messages = {line["msg"] for line in lines}
        return lines if {"case settled", "delivery ingested"} <= messages else None

    lines = wait_for(worker_lines, message="the worker's log lines")
    assert all(line["deliveryId"] == delivery_id for line in lines)
    assert [line["outcome"] for line in lines if line["msg"] == "delivery ingested"] == ["planned"]
    stored = {line["path"]: line for line in lines if line["msg"] == "file stored"}
    assert set(stored) == {"case.pdf", "items/001-IT-1"}
    manifest = archive.manifest(cf)
    assert manifest is not None
    assert stored["case.pdf"]["sha256"] == manifest["files"][0]["sha256"]
    [settled] = [line for line in lines if line["msg"] == "case settled"]
    assert settled["status"] == "complete" and "path" not in settled
    for text in (worker.log(), receiver.log_path.read_text()):
        assert TOKEN not in text and "s3cr3t" not in text


def test_log_format_follows_the_terminal() -> None:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    stream = io.StringIO()
    logs.setup(json_lines=True, stream=stream)
    try:
        with logs.bound(deliveryId="d-1", cfRef="CF-1"):
            logging.getLogger("casefetch.test").info(
                "hello %s", "été", extra=logs.fields(bytes=3, none=None)
            )
        logging.getLogger("casefetch.test").info("unbound")
        first, second = (json.loads(line) for line in stream.getvalue().splitlines())
        assert first["msg"] == "hello été" and first["deliveryId"] == "d-1"
        assert first["cfRef"] == "CF-1" and first["bytes"] == 3 and "none" not in first
        assert "deliveryId" not in second
        text = io.StringIO()
        logs.setup(json_lines=False, stream=text)
        with logs.bound(cfRef="CF-2"):
            logging.getLogger("casefetch.test").warning("plain")
        assert text.getvalue().rstrip().endswith("WARNING casefetch.test: plain cfRef=CF-2")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


async def test_batched_lines_are_the_lines_logging_would_write() -> None:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    stream = io.StringIO()
    logs.setup(json_lines=True, stream=stream)
    logger = logging.getLogger("casefetch.test.batched")
    try:
        lines = logs.BatchedLines(logger)
        with logs.bound(deliveryId="bound", cfRef="CF-0"):
            lines.info("delivery accepted", deliveryId="d-1", cfRef="CF-é", bytes=3, none=None)
        lines.info("delivery accepted", deliveryId="d-2", cfRef="CF-\udce9")  # lone surrogate
        assert stream.getvalue() == ""  # buffered, for one write
        lines.close()
        logger.info("delivery accepted", extra=logs.fields(deliveryId="d-3", cfRef="CF-3"))
        with logs.bound(deliveryId="bound", cfRef="CF-0"):
            logger.info(
                "delivery accepted",
                extra=logs.fields(deliveryId="d-1", cfRef="CF-é", bytes=3, none=None),
            )
        batched_1, batched_2, logged, logged_bound = (
            json.loads(line) for line in stream.getvalue().splitlines()
        )
        # The call's own fields win over the bound ones, as in every other line.
        assert batched_1 == {
            "ts": batched_1["ts"],
            "level": "info",
            "logger": "casefetch.test.batched",
            "msg": "delivery accepted",
            "deliveryId": "d-1",
            "cfRef": "CF-é",
            "bytes": 3,
        }
        assert logged_bound == {**batched_1, "ts": logged_bound["ts"]}
        assert batched_2["cfRef"] == "CF-\udce9"
        assert batched_1.keys() - {"bytes"} == logged.keys()
        assert len(batched_1["ts"]) == len(logged["ts"]) and batched_1["ts"] <= logged["ts"]

        full = logs.BatchedLines(logger, max_buffered=1)  # a full buffer is written at once
        full.info("delivery accepted", deliveryId="d-4")
        assert json.loads(stream.getvalue().splitlines()[-1])["deliveryId"] == "d-4"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_batched_lines_go_through_logging_when_someone_else_listens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO")
    logs.BatchedLines(logging.getLogger("casefetch.test.batched")).info(
        "delivery accepted", deliveryId="d-1"
    )
    [record] = [r for r in caplog.records if r.name == "casefetch.test.batched"]
    assert logs.record_fields(record) == {"deliveryId": "d-1"}


def test_dashboard_and_scrape_config_match_what_is_exported(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    unique: Callable[[str], str],
) -> None:
    import re

    yaml = pytest.importorskip("yaml")
    cf = unique("DASH")
    assert (
        receiver.post(samples.body(samples.case(cf, file_server.add(f"{cf}/pdf", samples.pdf()))))[
            0
        ]
        == 202
    )
    archive.settled(cf)
    exported = families(f"{receiver.url}/metrics") | families(worker_metrics_url(worker))
    deploy = ROOT / "deploy"
    dashboard = json.loads((deploy / "grafana/dashboards/casefetch.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in re.findall(
            r"(casefetch_[a-z_]+?)(?:_total|_bucket|_sum|_count)?\b", target["expr"]
        )
    }
    assert used and used <= exported, used - exported

    scrape_config = yaml.safe_load((deploy / "prometheus/prometheus.yml").read_text())
    ports = {
        job["job_name"]: job["dns_sd_configs"][0]["port"] for job in scrape_config["scrape_configs"]
    }
    assert ports == {"casefetch-receiver": 9100, "casefetch-worker": 9808}  # the metrics ports
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    monitoring = {
        name: service
        for name, service in compose["services"].items()
        if "monitoring" in service.get("profiles", [])
    }
    assert set(monitoring) == {"prometheus", "grafana"}
    for service in monitoring.values():
        for volume in service["volumes"]:
            source = volume.split(":", 1)[0]
            assert not source.startswith("./") or (ROOT / source).exists(), source


def test_an_identical_redelivery_is_not_counted_as_another_settled_case(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    unique: Callable[[str], str],
) -> None:
    cf = unique("DUP")
    body = samples.body(samples.case(cf, file_server.add(f"{cf}/pdf", samples.pdf())))
    assert receiver.post(body)[0] == 202
    archive.settled(cf)
    assert receiver.post(body)[0] == 202  # the platform sends the same case again

    def ingested() -> list[dict[str, Any]] | None:
        lines = [line for line in json_lines(worker.log()) if line.get("cfRef") == cf]
        outcomes = [line["outcome"] for line in lines if line["msg"] == "delivery ingested"]
        return lines if sorted(outcomes) == ["duplicate", "planned"] else None

    lines = wait_for(ingested, message="both deliveries ingested")
    # The re-delivery rewrites the manifest (its latestDeliveryId), but the case settled once.
    assert [line["status"] for line in lines if line["msg"] == "case settled"] == ["complete"]
    manifest = archive.manifest(cf)
    assert manifest is not None and manifest["latestDeliveryId"] != manifest["deliveryId"]
