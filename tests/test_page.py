"""The case page (worker.page) and the one mapping from items to files, as pure functions."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

from worker.manifest import case_items, item_files
from worker.page import render_case

HOSTILE = "<img src=x onerror=\"document.title='pwned'\"><script>alert(1)</script>"


def entry(path: str, status: str = "stored", **extra: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "path": path,
        "kind": "item_image",
        "status": status,
        "sourceUrl": f"https://files.example/{path}",
        "sha256": "ab" * 32 if status == "stored" else None,
        "bytes": 1234 if status == "stored" else None,
        "contentType": "image/jpeg" if status == "stored" else None,
        "error": None,
    }
    value.update(extra)
    return value


def manifest(files: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    pdf = {
        "path": "case.pdf",
        "kind": "case_pdf",
        "status": "stored",
        "sha256": "cd" * 32,
        "bytes": 5000,
        "contentType": "application/pdf",
        "error": None,
        "sourceUrl": "https://files.example/case.pdf?sig=1&x=2",
    }
    value = {
        "cfRef": "CF-1",
        "reportId": "R-1",
        "status": "complete",
        "updatedAt": "2026-11-28T10:00:05Z",
        "deliveryId": "d-1",
        "files": [pdf, *files],
        "warnings": [],
    }
    value.update(extra)
    return value


class Links(HTMLParser):
    """Every element, and every URL the page would load or link to."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.handlers: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in {"src", "href", "data", "poster", "action"} and value is not None:
                self.urls.append(value)
            if name.startswith("on"):
                self.handlers.append(name)


def parse(html: str) -> Links:
    links = Links()
    links.feed(html)
    return links


def test_every_item_in_order_with_its_values_whatever_their_json_type() -> None:
    items = [
        {
            "cfRef": "IT-1",
            "stepAction": "PHOTOGRAPHY",
            "createdAt": "2026-11-28T10:01:00Z",
            "description": "Façade",
            "data": "north side",
            "geolocLatitude": "48.85",
            "geolocLongitude": 2.35,
            "imageUrl": "https://files.example/1.jpg",
        },
        {"cfRef": "IT-2", "stepAction": "NUMBER_FIELD", "data": 42},
        {"cfRef": "IT-3", "stepAction": "SELECT", "data": {"choice": ["a", "b"]}},
        {"cfRef": "IT-4", "stepAction": "TEXT_FIELD", "data": None, "extraField": True},
        "not an object",
    ]
    page = render_case(
        manifest([entry("items/001-IT-1.jpg", item=1)]),
        {
            "cfRef": "CF-1",
            "reportId": "R-1",
            "frame": {"w": 3},
            "closed": False,
            "createdAt": "2026-11-28T10:00:00.000Z",
            "items": items,
        },
    )
    order = [page.index(f'id="item-{n}"') for n in range(1, 6)]
    assert order == sorted(order)
    for shown in (
        "north side",
        "48.85, 2.35",
        "42",
        "{&quot;choice&quot;: [&quot;a&quot;, &quot;b&quot;]}",
        "null",
        "extraField",
        "not an object",
        "false",
        "{&quot;w&quot;: 3}",
        "2026-11-28T10:00:00.000Z",
        "ab" * 32,
        "1234 bytes",
    ):
        assert shown in page, shown
    links = parse(page)
    assert '<a href="items/001-IT-1.jpg"><img src="items/001-IT-1.jpg"' in page
    assert "case.pdf" in links.urls and "case.json" in links.urls


def test_the_payload_is_text_never_markup() -> None:
    items = [
        {
            "cfRef": "IT-1",
            "stepAction": "PHOTOGRAPHY",
            "description": HOSTILE,
            "data": HOSTILE,
            HOSTILE: HOSTILE,
        }
    ]
    page = render_case(
        manifest([entry("items/001-IT-1.jpg", item=1)], cfRef=HOSTILE),
        {"cfRef": HOSTILE, "reportId": HOSTILE, "frame": HOSTILE, "items": items},
    )
    links = parse(page)
    assert "script" not in links.tags and not links.handlers
    assert links.tags.count("img") == 1, "only the item's own picture"
    assert "&lt;img src=x onerror=" in page


def test_links_are_relative_and_nothing_external_is_loaded() -> None:
    page = render_case(
        manifest(
            [
                entry("items/001-IT-1.jpg", item=1),
                entry(
                    "items/002-IT-2.mp4",
                    item=2,
                    contentType="video/mp4",
                    warning="a video where a picture was expected",
                ),
            ]
        ),
        {"items": [{"cfRef": "IT-1"}, {"cfRef": "IT-2", "stepAction": "VIDEO"}]},
    )
    links = parse(page)
    assert links.urls and all(not re.match(r"[a-z]+:|/", url) for url in links.urls), links.urls
    assert "video" in links.tags and "link" not in links.tags
    assert "https://files.example/case.pdf?sig=1&amp;x=2" in page, "source URLs as text"
    assert "a video where a picture was expected" in page


def test_failed_files_are_shown_failed_with_their_error() -> None:
    failed = entry("items/001-IT-1", status="failed", item=1, error="HTTP 404 from the host")
    pdf_failed = {
        "path": "case.pdf",
        "kind": "case_pdf",
        "status": "failed",
        "error": "HTTP 500 <b>",
        "sourceUrl": "https://files.example/case.pdf",
    }
    value = manifest([failed], status="incomplete")
    value["files"][0] = pdf_failed
    page = render_case(value, {"items": [{"cfRef": "IT-1"}]})
    assert "HTTP 404 from the host" in page and "HTTP 500 &lt;b&gt;" in page
    assert page.count('class="badge failed"') == 2
    assert "<object" not in page and "<img" not in page


def test_items_find_their_files_by_position_past_999() -> None:
    files = [entry(f"items/{n:03d}-IT-{n}.jpg", item=n) for n in (1, 100, 999, 1000, 1200)]
    legacy = [{k: v for k, v in f.items() if k != "item"} for f in files]
    payload = {"items": [{"cfRef": f"IT-{n}"} for n in range(1, 1201)]}
    for variant in (files, legacy):
        mapping = item_files(manifest(variant))
        assert {n: e["path"] for n, e in mapping.items()} == {
            1: "items/001-IT-1.jpg",
            100: "items/100-IT-100.jpg",
            999: "items/999-IT-999.jpg",
            1000: "items/1000-IT-1000.jpg",
            1200: "items/1200-IT-1200.jpg",
        }
        joined = case_items(manifest(variant), payload)
        assert len(joined) == 1200
        assert joined[99].file is not None and joined[99].file["path"] == "items/100-IT-100.jpg"
        assert joined[999].file is not None
        assert joined[999].file["path"] == "items/1000-IT-1000.jpg"
        assert joined[1000].file is None


def test_a_lone_surrogate_is_shown_as_its_escape() -> None:
    page = render_case(manifest([], cfRef="CF-\ud800"), {"items": [{"data": "a\udfffb"}]})
    assert "CF-\\ud800" in page and "a\\udfffb" in page
    page.encode("utf-8")
