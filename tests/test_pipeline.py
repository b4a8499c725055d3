"""End to end: the real receiver's message, a real Celery worker, a real file server."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis

from casefetch.constants import lock_key
from casefetch.protocol import make_delivery
from tests import samples
from tests.archive_view import Archive
from tests.fileserver import Fault, FileServer
from tests.processes import ReceiverProcess, WorkerProcess
from tests.samples import sha
from tests.waiting import wait_for
from worker.bookkeeping import Bookkeeping


def test_webhook_becomes_a_verified_archive(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    unique: Callable[[str], str],
) -> None:
    cf = unique("CF")
    pdf, png, jpg = samples.pdf(50_000), samples.png(seed=1), samples.jpeg(20_000, seed=2)
    # URLs deliberately without (or with misleading) extensions: the type comes from the bytes.
    items = [
        samples.item("IT-1", file_server.add(f"{cf}/photo", png), data="Façade 🌞"),
        samples.item("IT-2", file_server.add(f"{cf}/sign.png", jpg), step="SIGNATURE"),
        samples.item("IT-3", None, step="TEXT_FIELD", data="libellé"),
        samples.item("IT-4", "", step="EMAIL", data="a@b.c"),
    ]
    payload = samples.case(cf, file_server.add(f"{cf}/report", pdf) + "?X-Sig=a%2Fb&e=1", items)
    body = samples.body(payload)
    status, answer = receiver.post(body)
    assert status == 202, answer

    manifest = archive.settled(cf)
    assert manifest["status"] == "complete"
    assert manifest["cfRef"] == cf and manifest["reportId"] == f"R-{cf}"
    files = {f["path"]: f for f in manifest["files"]}
    assert set(files) == {"case.pdf", "items/001-IT-1.png", "items/002-IT-2.jpg"}
    folder = archive.case(cf)
    for path, data, ctype in [
        ("case.pdf", pdf, "application/pdf"),
        ("items/001-IT-1.png", png, "image/png"),
        ("items/002-IT-2.jpg", jpg, "image/jpeg"),
    ]:
        assert (folder / path).read_bytes() == data
        assert files[path]["sha256"] == sha(data)
        assert files[path]["bytes"] == len(data)
        assert files[path]["contentType"] == ctype
        assert files[path]["status"] == "stored" and files[path]["error"] is None
    assert files["case.pdf"]["sourceUrl"] == payload["caseUrl"]
    assert files["items/002-IT-2.jpg"]["itemCfRef"] == "IT-2"
    assert files["items/002-IT-2.jpg"]["stepAction"] == "SIGNATURE"
    assert (folder / "case.json").read_bytes() == body
    assert not list((archive.root / ".tmp").glob("*"))


def enqueue_raw(redis_client: redis.Redis, body: bytes) -> str:
    """Write a delivery as the receiver does, bypassing its checks (as a replay would)."""
    delivery = make_delivery(body, {"Content-Type": "application/json"})
    Bookkeeping(redis_client).enqueue(delivery)
    return delivery["deliveryId"]


def test_unarchivable_payloads_are_quarantined(
    worker: WorkerProcess, archive: Archive, redis_client: redis.Redis
) -> None:
    good = samples.case("CF-Q", "https://files.example.com/c.pdf")
    cases: list[tuple[bytes, str, str]] = [
        (b"{not json", "not_json", "_schema"),
        (b"\xff\xfe\x00garbage", "not_json", "_schema"),
        (b"[1, 2, 3]", "not_an_object", "_schema"),
        (samples.body({k: v for k, v in good.items() if k != "cfRef"}), "invalid_case", "cfRef"),
        (samples.body({**good, "reportId": 12}), "invalid_case", "reportId"),
        (samples.body({**good, "caseUrl": "ftp://x/y.pdf"}), "invalid_case", "caseUrl"),
        (samples.body({**good, "createdAt": "yesterday"}), "invalid_case", "createdAt"),
        (samples.body({**good, "items": {"0": {}}}), "invalid_case", "items"),
    ]
    for body, reason, field in cases:
        delivery_id = enqueue_raw(redis_client, body)
        record = archive.quarantined(delivery_id)
        assert record["reason"] == reason, body
        assert field in record["errors"], record["errors"]
        assert record["deliveryId"] == delivery_id and record["receivedAt"]
        if "body" in record:
            assert record["body"].encode() == body
        else:
            import base64

            assert base64.b64decode(record["bodyBase64"]) == body
        assert "Authorization" not in record["headers"]


def test_item_problems_are_recorded_without_losing_the_case(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    unique: Callable[[str], str],
) -> None:
    cf = unique("CF")
    png = samples.png(seed=3)
    items: list[Any] = [
        samples.item("IT-ok", file_server.add(f"{cf}/ok", png)),
        samples.item("IT-step", file_server.add(f"{cf}/step", png), step="HOLOGRAM"),
        samples.item("IT-url", "not a url"),
        samples.item("IT-date", None, createdAt="31/12/2026"),
        "not an object",
        samples.item("IT-geo", None, geolocLatitude=48.85, geolocLongitude="2.35"),
        {**samples.item("IT-extra", None), "futureField": {"kept": True}},
    ]
    body = samples.body(
        samples.case(cf, file_server.add(f"{cf}/pdf", samples.pdf()), items, unknownTopLevel=[1, 2])
    )
    assert receiver.post(body)[0] == 202
    manifest = archive.settled(cf)
    assert manifest["status"] == "incomplete"
    warned = {w["item"]: w for w in manifest["warnings"]}
    assert set(warned) == {2, 3, 4, 5}
    assert "stepAction" in warned[2]["errors"]
    assert "imageUrl" in warned[3]["errors"]
    assert "createdAt" in warned[4]["errors"]
    files = {f["path"]: f for f in manifest["files"]}
    assert files["items/001-IT-ok.png"]["status"] == "stored"
    assert files["items/002-IT-step.png"]["status"] == "stored"
    bad = files["items/003-IT-url"]
    assert bad["status"] == "failed" and "imageUrl" in bad["error"]
    assert bad["sourceUrl"] == "not a url"
    stored = json.loads((archive.case(cf) / "case.json").read_bytes())
    assert stored["unknownTopLevel"] == [1, 2]
    assert stored["items"][6]["futureField"] == {"kept": True}


def test_transient_failures_are_retried_then_stored(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    unique: Callable[[str], str],
) -> None:
    cf = unique("CF")
    pdf = samples.pdf(10_000)
    url = file_server.add(f"{cf}/flaky.pdf", pdf, faults=[Fault(status=503), Fault(status=503)])
    assert receiver.post(samples.body(samples.case(cf, url)))[0] == 202
    manifest = archive.settled(cf)
    assert manifest["status"] == "complete"
    [entry] = manifest["files"]
    assert entry["attempts"] == 3 and entry["sha256"] == sha(pdf)
    assert file_server.hits[f"/{cf}/flaky.pdf"] == 3


def test_permanent_failures_end_incomplete(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    unique: Callable[[str], str],
) -> None:
    cf = unique("CF")
    pdf = samples.pdf()
    items = [
        samples.item(
            "down", file_server.add(f"{cf}/down", samples.png(), always=Fault(status=503))
        ),
        samples.item(
            "gone", file_server.add(f"{cf}/gone", samples.png(), always=Fault(status=404))
        ),
        samples.item("html", file_server.add(f"{cf}/html", b"<html>login</html>")),
        samples.item(
            "cut", file_server.add(f"{cf}/cut", samples.jpeg(50_000), always=Fault(truncate=10_000))
        ),
    ]
    assert (
        receiver.post(samples.body(samples.case(cf, file_server.add(f"{cf}/pdf", pdf), items)))[0]
        == 202
    )
    manifest = archive.settled(cf)
    assert manifest["status"] == "incomplete"
    files = {f["itemCfRef"]: f for f in manifest["files"] if f["kind"] == "item_image"}
    assert files["down"]["status"] == "failed" and "503" in files["down"]["error"]
    assert files["down"]["attempts"] == 3
    assert files["gone"]["status"] == "failed" and files["gone"]["attempts"] == 1
    assert files["html"]["status"] == "failed" and "image" in files["html"]["error"]
    assert files["cut"]["status"] == "failed" and files["cut"]["attempts"] == 3
    assert not list((archive.case(cf) / "items").glob("*")), "nothing partial is stored"
    assert manifest["files"][0]["status"] == "stored"


def test_redelivery_identical_and_changed(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    unique: Callable[[str], str],
) -> None:
    cf = unique("CF")
    pdf_url = file_server.add(f"{cf}/pdf", samples.pdf())
    one = file_server.add(f"{cf}/one", samples.png(seed=5))
    two = file_server.add(f"{cf}/two", samples.jpeg(seed=6))
    first = samples.body(samples.case(cf, pdf_url, [samples.item("A", one)]))
    status, answer = receiver.post(first)
    first_id = answer["deliveryId"]
    archive.settled(cf)

    status, again = receiver.post(first)
    assert status == 202 and again["deliveryId"] != first_id

    def ingested_twice() -> bool:
        return worker.log().count(f"identical re-delivery of {cf}") == 1

    wait_for(ingested_twice, message="the re-delivery to be seen")
    assert file_server.hits[f"/{cf}/pdf"] == 1 and file_server.hits[f"/{cf}/one"] == 1
    assert not (archive.case(cf) / "history").exists()

    changed = samples.body(
        samples.case(cf, pdf_url, [samples.item("A", one), samples.item("B", two)])
    )
    status, answer = receiver.post(changed)
    assert status == 202

    def has_b() -> Any:
        m = archive.manifest(cf)
        return m if m and m["status"] == "complete" and len(m["files"]) == 3 else None

    manifest = wait_for(has_b, message="the changed case to settle")
    assert manifest["deliveryId"] == answer["deliveryId"]
    assert (archive.case(cf) / "case.json").read_bytes() == changed
    assert (archive.case(cf) / "history" / f"{first_id}.json").read_bytes() == first
    assert file_server.hits[f"/{cf}/pdf"] == 1 and file_server.hits[f"/{cf}/one"] == 1
    assert file_server.hits[f"/{cf}/two"] == 1


def test_many_items_are_fetched_concurrently(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    unique: Callable[[str], str],
) -> None:
    cf = unique("CF")
    delay = 0.5
    file_server.max_in_flight = 0
    items = [
        samples.item(
            f"I{i}", file_server.add(f"{cf}/{i}", samples.png(seed=i), faults=[Fault(delay=delay)])
        )
        for i in range(8)
    ]
    assert (
        receiver.post(
            samples.body(samples.case(cf, file_server.add(f"{cf}/pdf", samples.pdf()), items))
        )[0]
        == 202
    )
    manifest = archive.settled(cf)
    assert manifest["status"] == "complete"
    # Each image is held back, so downloads done one after another never overlap.
    assert file_server.max_in_flight >= 4


def test_a_batch_fetches_the_rest_while_one_file_is_held_elsewhere(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    redis_client: redis.Redis,
    unique: Callable[[str], str],
) -> None:
    cf = unique("CF")
    held = lock_key("file", f"cases/{cf}", "case.pdf")
    redis_client.set(held, "another-worker", ex=60)  # another worker is fetching the PDF
    items = [
        samples.item(name, file_server.add(f"{cf}/{name}", samples.png(seed=i)))
        for i, name in enumerate(["A", "B"])
    ]
    assert (
        receiver.post(
            samples.body(samples.case(cf, file_server.add(f"{cf}/pdf", samples.pdf()), items))
        )[0]
        == 202
    )

    def images_stored() -> bool:
        return all(
            (archive.case(cf) / "items" / f"00{n}-{name}.png").exists()
            for n, name in [(1, "A"), (2, "B")]
        )

    wait_for(images_stored, message="the batch's other files to be stored")
    assert file_server.hits[f"/{cf}/pdf"] == 0
    assert (archive.manifest(cf) or {}).get("status") == "pending"
    redis_client.delete(held)  # that worker is done with it (here: it died, nothing stored)
    manifest = archive.settled(cf)
    assert manifest["status"] == "complete"
    assert file_server.hits[f"/{cf}/pdf"] == 1
    assert file_server.hits[f"/{cf}/A"] == 1 and file_server.hits[f"/{cf}/B"] == 1


def test_every_byte_the_platform_serves_is_kept(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    unique: Callable[[str], str],
) -> None:
    """Each row of issue 15's table, as phones and document stores write the files."""
    cf = unique("CF")
    pdf = samples.pdf(30_000) + b"\r\n% an incremental update's bytes, after %%EOF\r\n\x00"
    # item cfRef: (stepAction, bytes, how it is served, extension, warned)
    served: dict[str, tuple[str, bytes, dict[str, Any], str, bool]] = {
        "motion": ("PHOTOGRAPHY", samples.motion_photo(), {}, "jpg", False),
        "trailer": ("PHOTOGRAPHY", samples.camera_trailer(), {"chunked": True}, "jpg", False),
        "png-tail": ("SIGNATURE", samples.png(seed=4) + b"\x00after IEND", {}, "png", False),
        "heic": ("PHOTOGRAPHY", samples.heic(), {}, "heic", True),
        "avif": ("PHOTOGRAPHY", samples.avif(), {"unframed": True}, "avif", True),
        "mp4": ("VIDEO", samples.mp4(seed=3), {}, "mp4", False),
        "mov": ("VIDEO", samples.quicktime(), {}, "mov", False),
        "sup": (
            "PHOTOGRAPHY",
            samples.png(seed=5),
            {"faults": [Fault(status=503, headers={"Retry-After": "\u00b9"})]},
            "png",
            False,
        ),
        "len": (
            "PHOTOGRAPHY",
            samples.jpeg(5000, seed=6),
            {"faults": [Fault(headers={"Content-Length": "\u00b2"})]},
            "jpg",
            False,
        ),
    }
    items = [
        samples.item(name, file_server.add(f"{cf}/{name}/phöto {name}", data, **how), step=step)
        for name, (step, data, how, _, _) in served.items()
    ]
    items += [
        samples.item("number", None, step="NUMBER_FIELD", data=42),
        samples.item(
            "select",
            None,
            step="SELECT",
            data=["a", "b"],
            description={"rich": True},
            geolocLatitude=[48.8],
        ),
    ]
    case_url = file_server.add(f"{cf}/rapport-été.pdf", pdf) + "?sig=é"
    payload = samples.case(cf, case_url, items, frame=123, closed="maybe")
    assert receiver.post(samples.body(payload))[0] == 202

    manifest = archive.settled(cf)
    files = {f.get("itemCfRef") or "case": f for f in manifest["files"]}
    folder = archive.case(cf)
    assert files["case"]["path"] == "case.pdf" and files["case"]["sourceUrl"] == case_url
    assert (folder / "case.pdf").read_bytes() == pdf and files["case"]["sha256"] == sha(pdf)
    for name, (_, data, _, extension, warned) in served.items():
        entry = files[name]
        assert entry["status"] == "stored", (name, entry)
        assert entry["path"].endswith(f"-{name}.{extension}"), entry
        assert entry["sha256"] == sha(data) and (folder / entry["path"]).read_bytes() == data
        assert ("warning" in entry) is warned, entry
    assert files["sup"]["attempts"] == 2 and files["len"]["attempts"] == 2
    assert files["heic"]["contentType"] == "image/heic"
    assert files["mp4"]["contentType"] == "video/mp4"
    warnings = {(w.get("itemCfRef"), w.get("path")) for w in manifest["warnings"]}
    assert warnings == {("heic", files["heic"]["path"]), ("avif", files["avif"]["path"])}
    assert manifest["status"] == "complete"


def test_fields_of_any_json_type_leave_a_case_complete(
    receiver: ReceiverProcess,
    worker: WorkerProcess,
    file_server: FileServer,
    archive: Archive,
    unique: Callable[[str], str],
) -> None:
    cf = unique("CF")
    items = [
        samples.item(
            "photo",
            file_server.add(f"{cf}/p", samples.png(seed=8)),
            data={"title": "Façade"},
            geolocLatitude=True,
            geolocLongitude=None,
        ),
        samples.item("number", None, step="NUMBER_FIELD", data=42),
        samples.item("select", None, step="SELECT", data=["a", "b"], description=7),
        samples.item("unknown", None, step="HOLOGRAM"),
    ]
    body = samples.body(
        samples.case(
            cf, file_server.add(f"{cf}/pdf", samples.pdf()), items, frame=123, closed="maybe"
        )
    )
    assert receiver.post(body)[0] == 202
    manifest = archive.settled(cf)
    assert manifest["status"] == "complete", manifest
    # A field problem (an unknown stepAction) is a warning; it does not make a case incomplete.
    assert [w["itemCfRef"] for w in manifest["warnings"]] == ["unknown"]
    assert (archive.case(cf) / "case.json").read_bytes() == body
