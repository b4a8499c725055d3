"""``casefetch archive serve`` over HTTP: read-only, no path outside the archive, no script,
credentials off loopback, and the catalog behind the list and the search."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from casefetch.errors import ConfigError
from casefetch_tools.browse import BrowseSettings, create_app, is_loopback
from tests import samples
from tests.paths import ROOT
from tests.processes import worker_env
from worker.catalog import Catalog, Query, row_for
from worker.storage import LocalStorage

SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
HTML = b"<html><script>alert(1)</script></html>"

Client = TestClient[web.Request, web.Application]


def put_case(
    storage: LocalStorage,
    cf_ref: str,
    updated: str,
    status: str = "complete",
    extra_files: list[dict[str, Any]] | None = None,
) -> None:
    folder = f"cases/{cf_ref}"
    png = samples.png(seed=3)
    storage.write_bytes(f"{folder}/case.pdf", samples.pdf())
    storage.write_bytes(f"{folder}/items/001-IT-1.png", png)
    files = [
        {
            "path": "case.pdf",
            "kind": "case_pdf",
            "status": "stored",
            "sha256": samples.sha(samples.pdf()),
            "bytes": len(samples.pdf()),
            "contentType": "application/pdf",
            "error": None,
            "sourceUrl": "http://x/pdf",
        },
        {
            "path": "items/001-IT-1.png",
            "kind": "item_image",
            "item": 1,
            "itemCfRef": "IT-1",
            "status": "stored",
            "sha256": samples.sha(png),
            "bytes": len(png),
            "contentType": "image/png",
            "error": None,
            "sourceUrl": "http://x/1",
        },
        *(extra_files or []),
    ]
    payload = samples.case(
        cf_ref,
        "http://x/pdf",
        [samples.item("IT-1", "http://x/1")],
        reportId=f"REP-{cf_ref.lower()}",
    )
    storage.write_bytes(f"{folder}/case.json", samples.body(payload))
    storage.write_bytes(
        f"{folder}/manifest.json",
        json.dumps(
            {
                "cfRef": cf_ref,
                "reportId": payload["reportId"],
                "status": status,
                "updatedAt": updated,
                "deliveryId": f"d-{cf_ref}",
                "files": files,
                "warnings": [],
            }
        ).encode(),
    )


@pytest.fixture
def archive(tmp_path: Path) -> tuple[LocalStorage, Catalog]:
    storage = LocalStorage(tmp_path / "archive")
    for day in range(1, 8):
        put_case(
            storage,
            f"CF-{day}",
            f"2026-11-0{day}T10:00:00Z",
            status="incomplete" if day % 3 == 0 else "complete",
        )
    hostile = [
        {
            "path": name,
            "kind": "item_image",
            "item": 2,
            "status": "stored",
            "sha256": samples.sha(data),
            "bytes": len(data),
            "contentType": kind,
            "error": None,
            "sourceUrl": "http://x/2",
        }
        for name, data, kind in (
            ("items/002-IT-2.svg", SVG, "image/svg+xml"),
            ("items/003-IT-3.html", HTML, "text/html"),
        )
    ]
    put_case(storage, "EVIL", "2026-11-09T10:00:00Z", extra_files=hostile)
    storage.write_bytes("cases/EVIL/items/002-IT-2.svg", SVG)
    storage.write_bytes("cases/EVIL/items/003-IT-3.html", HTML)
    storage.write_bytes("secret.txt", b"outside the cases")
    storage.write_bytes(
        "quarantine/q-1.json",
        json.dumps(
            {
                "deliveryId": "q-1",
                "receivedAt": "2026-11-28T10:00:00Z",
                "reason": "invalid_case",
                "errors": {"caseUrl": ["<b>Not a valid URL.</b>"]},
                "body": "{}",
                "headers": {},
            }
        ).encode(),
    )
    catalog = Catalog(tmp_path / "index.sqlite")
    assert catalog.rebuild(storage) == 8
    return storage, catalog


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, archive: tuple[LocalStorage, Catalog]) -> Client:
    storage, catalog = archive
    return await aiohttp_client(create_app(storage, catalog, BrowseSettings()))


async def test_list_newest_first_filtered_searched_and_paged(client: Client) -> None:
    page = await (await client.get("/")).text()
    assert page.index("EVIL") < page.index("CF-7") < page.index("CF-1")
    only = await (await client.get("/?status=incomplete")).text()
    assert "CF-3" in only and "CF-6" in only and "CF-1<" not in only
    dated = await (await client.get("/?since=2026-11-02&until=2026-11-03")).text()
    assert "CF-2" in dated and "CF-3" in dated and "CF-4" not in dated and "CF-1<" not in dated
    found = await (await client.get("/?q=rep-cf-5")).text()
    assert "CF-5" in found and "CF-4" not in found and "1 case<" in found
    assert "CF-5" in await (await client.get("/?q=F-5")).text()
    assert (await client.get("/?since=yesterday")).status == 400
    assert (await client.get("/?status=lost")).status == 400


def test_the_catalog_pages(archive: tuple[LocalStorage, Catalog]) -> None:
    _storage, catalog = archive
    first, total = catalog.search(Query(limit=3))
    second, _ = catalog.search(Query(limit=3, offset=3))
    assert total == 8 and [r.cfRef for r in first + second] == [
        "EVIL",
        "CF-7",
        "CF-6",
        "CF-5",
        "CF-4",
        "CF-3",
    ]
    assert catalog.search(Query(text="%"))[1] == 0, "LIKE wildcards are plain text"
    catalog.path.write_bytes(b"not a database, as after a bad day " * 100)
    assert catalog.rebuild(_storage) == 8 and catalog.search(Query())[1] == 8
    catalog.record(
        row_for(
            "cases/_odd",
            {"cfRef": "CF-\ud800", "reportId": "R-\udfff", "status": "complete", "files": []},
            None,
        )
    )
    assert catalog.search(Query(text="CF-\\ud800"))[0][0].reportId == "R-\\udfff"


async def test_case_page_and_files_with_their_stored_type(client: Client) -> None:
    response = await client.get("/cases/CF-1")
    assert response.status == 200 and str(response.url).endswith("/cases/CF-1/")
    page = await response.text()
    assert "REP-cf-1" in page and 'src="items/001-IT-1.png"' in page
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy
    pdf = await client.get("/cases/CF-1/case.pdf")
    assert pdf.headers["Content-Type"] == "application/pdf"
    assert await pdf.read() == samples.pdf()
    png = await client.get("/cases/CF-1/items/001-IT-1.png")
    assert png.headers["Content-Type"] == "image/png"
    assert png.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in png.headers["Content-Security-Policy"]
    case_json = await client.get("/cases/CF-1/case.json")
    assert case_json.headers["Content-Type"].startswith("application/json")


async def test_svg_and_html_in_the_archive_are_never_rendered(client: Client) -> None:
    for path in ("items/002-IT-2.svg", "items/003-IT-3.html"):
        response = await client.get(f"/cases/EVIL/{path}")
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["Content-Disposition"].startswith("attachment")
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    "path",
    [
        "/cases/CF-1/../../secret.txt",
        "/cases/CF-1/%2e%2e/%2e%2e/secret.txt",
        "/cases/CF-1/..%2f..%2fsecret.txt",
        "/cases/CF-1/items%2f..%2f..%2f..%2fsecret.txt",
        "/cases/..%2f..%2fsecret.txt/",
        "/cases/CF-1/..%5c..%5csecret.txt",
        "/cases/CF-1/items\\..\\..\\secret.txt",
        "/cases/CF-1//etc/passwd",
        "/cases/CF-1/%2fetc%2fpasswd",
        "/cases/CF-1/case.pdf%00.png",
        "/cases/%00/",
        "/cases/CF-1/items/001-IT-1.png/..",
        "/cases/CF-1/history/../manifest.json.bak",
        "/cases/.tmp/",
        "/cases/CF-1/.index.sqlite",
        "/secret.txt",
        "/.index.sqlite",
    ],
)
async def test_nothing_outside_the_archive_is_served(client: Client, path: str) -> None:
    status, head, body = await raw_get(client, path)
    assert b"outside the cases" not in body and b"root:" not in body
    assert status in {400, 404} or (status == 302 and b"\r\nLocation: /cases/CF-1/" in head), (
        path,
        status,
    )


async def raw_get(client: Client, path: str) -> tuple[int, bytes, bytes]:
    """A GET of ``path`` exactly as written: no client tidies its dots or escapes."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode("latin-1"))
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_write_methods_answer_405(client: Client, method: str) -> None:
    for path in ("/", "/cases/CF-1/", "/cases/CF-1/case.pdf", "/nowhere"):
        response = await client.request(method, path)
        assert response.status == 405, (method, path)


async def test_quarantine_is_listed_escaped(client: Client) -> None:
    page = await (await client.get("/quarantine")).text()
    assert "q-1" in page and "invalid_case" in page
    assert "&lt;b&gt;Not a valid URL.&lt;/b&gt;" in page


async def test_credentials_when_configured(
    aiohttp_client: Any, archive: tuple[LocalStorage, Catalog]
) -> None:
    storage, catalog = archive
    client = await aiohttp_client(
        create_app(storage, catalog, BrowseSettings(users=(("ops", "s3cret:x"),)))
    )
    assert (await client.get("/healthz")).status == 200, "for the container's healthcheck"
    refused = await client.get("/")
    assert refused.status == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    wrong = base64.b64encode(b"ops:nope").decode()
    assert (await client.get("/", headers={"Authorization": f"Basic {wrong}"})).status == 401
    right = base64.b64encode(b"ops:s3cret:x").decode()
    assert (
        await client.get("/cases/CF-1/case.pdf", headers={"Authorization": f"Basic {right}"})
    ).status == 200


def test_credentials_are_read_like_the_receivers() -> None:
    env = {"ARCHIVE_SERVE_USERS": "ops:pa:ss , audit:x"}
    assert BrowseSettings.from_env(env).users == (("ops", "pa:ss"), ("audit", "x"))
    with pytest.raises(ConfigError, match=r"ARCHIVE_SERVE_USERS.*placeholder"):
        BrowseSettings.from_env({"ARCHIVE_SERVE_USERS": "ops:change-me-please"})
    with pytest.raises(ConfigError, match="ARCHIVE_SERVE_USERS"):
        BrowseSettings().check_host("0.0.0.0")
    BrowseSettings(users=(("ops", "x"),)).check_host("0.0.0.0")


def test_loopback_only_without_credentials() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "::1", "localhost", "127.0.0.2"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.2", "example.org"]))


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_serve_refuses_to_start_open_without_credentials(tmp_path: Path, host: str) -> None:
    env = worker_env("redis://127.0.0.1:1/0", tmp_path / "archive")
    env.pop("ARCHIVE_SERVE_USERS", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "casefetch_tools",
            "archive",
            "serve",
            "--host",
            host,
            "--port",
            "0",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert "ARCHIVE_SERVE_USERS" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
