"""The pages in a real browser: Debian's chromium, driven by Playwright (never a browser of
Playwright's own). Cases are archived by the real pipeline, then read as people read them:
index.html from file:// (in place and copied elsewhere), and ``casefetch archive serve``.

Set CASEFETCH_SCREENSHOTS=1 to refresh the screenshots in docs/.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from casefetch_tools import samples as sample_files
from casefetch_tools.redis_server import RedisServer, free_port
from tests import samples
from tests.archive_view import Archive
from tests.fileserver import Fault, FileServer
from tests.paths import ROOT
from tests.processes import ReceiverProcess, WorkerProcess, worker_env
from tests.waiting import wait_for

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
HOSTILE = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"
#: The browser's own resources (its PDF viewer's pages and style): never the network.
BROWSER_INTERNAL = ("chrome:", "chrome-extension:", "data:", "about:")


PDF = sample_files.pdf(
    [
        "Certificate RPT-2026-0042",
        "12 rue de la Paix, Paris",
        "Inspection of 27 November 2026",
        "Verdict: compliant",
    ]
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI"):  # .ci/run installs it: never pass CI without these tests
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


@dataclass
class Certified:
    cf_ref: str
    folder: Path
    images: int


@pytest.fixture(scope="module")
def certified(
    receiver: ReceiverProcess, worker: WorkerProcess, file_server: FileServer, archive_dir: Path
) -> Certified:
    """A case as the platform would send it: a PDF, photos, a signature, fields, a photo the
    host lost, and a description written to attack the page."""
    cf = f"BROWSER-{os.getpid()}"
    photo = file_server.add(f"{cf}/photo", samples.png(160, 120, seed=40))
    signature = file_server.add(f"{cf}/sig", samples.png(120, 48, seed=90))
    lost = file_server.add(f"{cf}/lost", samples.png(), always=Fault(404))
    items = [
        samples.item(
            "IT-1",
            photo,
            description="Façade côté rue",
            data="Front, north side",
            geolocLatitude="48.8566",
            geolocLongitude=2.3522,
        ),
        samples.item(
            "IT-2", None, step="DATE_FIELD", description="Inspection date", data="2026-11-27"
        ),
        samples.item("IT-3", None, step="SELECT", description="Roof condition", data="good"),
        samples.item("IT-4", lost, description="Back garden", data="garden"),
        samples.item("IT-5", None, step="TEXT_FIELD", description=HOSTILE, data=HOSTILE),
        samples.item("IT-6", signature, step="SIGNATURE", description="Signature of the owner"),
    ]
    body = samples.body(
        samples.case(cf, file_server.add(f"{cf}/pdf", PDF), items, reportId="RPT-2026-0042")
    )
    assert receiver.post(body)[0] == 202
    for n in range(1, 4):  # neighbours in the list
        other = f"{cf}-{n}"
        assert (
            receiver.post(
                samples.body(
                    samples.case(
                        other,
                        file_server.add(f"{other}/pdf", PDF),
                        [
                            samples.item(
                                "IT-1", file_server.add(f"{other}/img", samples.png(seed=n))
                            )
                        ],
                        reportId=f"RPT-2026-00{30 + n}",
                    )
                )
            )[0]
            == 202
        )
        Archive(archive_dir).settled(other)
    Archive(archive_dir).settled(cf)
    return Certified(cf, Archive(archive_dir).case(cf), images=2)


def watch_requests(page: Any) -> list[str]:
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    return seen


def loaded_images(page: Any) -> list[dict[str, Any]]:
    """Every picture on the page, once each has been scrolled to and has finished."""
    for image in page.query_selector_all("img"):
        image.scroll_into_view_if_needed()
    page.wait_for_function("[...document.images].every(i => i.complete)")
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        "img", "all => all.map(i => ({src: i.src, width: i.naturalWidth}))"
    )


def check_case_page(page: Any, certified: Certified, url: str) -> list[str]:
    """Open the case page at ``url`` and check what a reader sees; the requests it made."""
    requests = watch_requests(page)
    page.goto(url)
    images = loaded_images(page)
    assert len(images) == certified.images
    assert all(image["width"] > 0 for image in images), images
    text = page.inner_text("body")
    for shown in (
        certified.cf_ref,
        "RPT-2026-0042",
        "Façade côté rue",
        "Front, north side",
        "48.8566, 2.3522",
        "2026-11-27",
        "Roof condition",
        "Signature of the owner",
        "HTTP 404",
        HOSTILE,
    ):
        assert shown in text, shown
    assert page.title() != "pwned"
    assert page.locator(".badge.failed").count() >= 1
    return requests


def test_index_html_from_disk_and_from_a_copy(
    page: Any, certified: Certified, tmp_path: Path
) -> None:
    copy = tmp_path / "copied elsewhere" / certified.folder.name
    shutil.copytree(certified.folder, copy)
    for folder in (certified.folder, copy):
        requests = check_case_page(page, certified, (folder / "index.html").as_uri())
        assert requests and all(url.startswith(("file:", *BROWSER_INTERNAL)) for url in requests), (
            requests
        )
        assert not any(url.endswith("/x") for url in requests), "the hostile img never loads"
        pdf = page.eval_on_selector('a[href="case.pdf"]', "a => a.href")
        assert Path(unquote(urlparse(pdf).path)).read_bytes() == PDF
        for image in page.eval_on_selector_all("img", "all => all.map(i => i.src)"):
            assert Path(unquote(urlparse(image).path)).is_relative_to(folder)


@pytest.fixture(scope="module")
def served(
    redis_server: RedisServer,
    archive_dir: Path,
    certified: Certified,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("logs") / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "casefetch_tools", "archive", "serve", "--port", str(port)],
            env=worker_env(redis_server.url, archive_dir),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"archive serve exited:\n{log_path.read_text()}")
        return raw(url, "GET", "/healthz")[0] == 200

    try:
        wait_for(up, timeout=30, message="archive serve")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def raw(base: str, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """A request sent exactly as written (no client tidies its dots or escapes)."""
    parsed = urlparse(base)
    connection = http.client.HTTPConnection(parsed.hostname or "", parsed.port, timeout=10)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        connection.putheader("Content-Length", "0")
        connection.endheaders()
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    except (ConnectionError, OSError):
        return 0, {}, b""
    finally:
        connection.close()


def test_archive_serve_list_search_case_and_files(
    page: Any, certified: Certified, served: str
) -> None:
    refused: list[str] = []
    page.on(
        "console", lambda message: refused.append(message.text) if message.type == "error" else None
    )
    page.goto(served + "/")
    assert certified.cf_ref in page.inner_text("table")
    page.fill('input[name="q"]', "BROWSER")
    page.click('button[type="submit"]')
    page.wait_for_url("**/?q=BROWSER*")
    assert page.locator("tbody tr").count() >= 4
    keep_screenshot(page, "archive-list.png")
    page.fill('input[name="q"]', "RPT-2026-0042")
    page.click('button[type="submit"]')
    page.wait_for_url("**/?q=RPT-2026-0042*")
    assert page.locator("tbody tr").count() == 1

    page.click(f"text={certified.cf_ref}")
    page.wait_for_url(f"**/cases/{certified.folder.name}/")
    requests = check_case_page(page, certified, page.url)
    assert all(url.startswith((served, *BROWSER_INTERNAL)) for url in requests), requests
    keep_screenshot(page, "case-page.png", top=True)

    pdf = page.request.get(page.eval_on_selector('a[href="case.pdf"]', "a => a.href"))
    assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.body() == PDF
    for image in page.eval_on_selector_all("img", "all => all.map(i => i.src)"):
        answer = page.request.get(image)
        assert answer.headers["content-type"] == "image/png"
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert not [m for m in refused if "Content Security Policy" in m], refused

    page.goto(served + "/quarantine")
    assert "Quarantine" in page.inner_text("h1")


@pytest.mark.parametrize(
    "path",
    [
        "/cases/{case}/../../.index.sqlite",
        "/cases/{case}/%2e%2e/%2e%2e/.index.sqlite",
        "/cases/{case}/..%2f..%2f.index.sqlite",
        "/cases/{case}/..%5c..%5c.index.sqlite",
        "/cases/{case}/items\\..\\..\\..\\.index.sqlite",
        "/cases/{case}/%2fetc%2fpasswd",
        "/cases/{case}//etc/passwd",
        "/cases/{case}/case.pdf%00",
        "/etc/passwd",
        "/cases/..%2f..%2f..%2f..%2fetc/passwd",
        "/cases/%2e%2e/manifest.json",
    ],
)
def test_archive_serve_serves_nothing_outside_the_archive(
    certified: Certified, served: str, path: str
) -> None:
    status, _headers, body = raw(served, "GET", path.format(case=certified.folder.name))
    assert status in {400, 404}, (path, status)
    assert b"SQLite format" not in body and b"root:" not in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_archive_serve_is_read_only(certified: Certified, served: str, method: str) -> None:
    for path in (
        "/",
        f"/cases/{certified.folder.name}/",
        f"/cases/{certified.folder.name}/case.pdf",
    ):
        assert raw(served, method, path)[0] == 405, (method, path)
    assert (certified.folder / "case.pdf").read_bytes() == PDF


def keep_screenshot(page: Any, name: str, top: bool = False) -> None:
    if not os.environ.get("CASEFETCH_SCREENSHOTS"):
        return
    if top:
        page.evaluate("window.scrollTo(0, 0)")
    page.set_viewport_size({"width": 1100, "height": 1500 if top else 560})
    page.wait_for_timeout(2000)  # the PDF viewer draws its page a moment after loading
    page.screenshot(path=str(ROOT / "docs" / name), full_page=False)
    page.set_viewport_size({"width": 1100, "height": 900})
