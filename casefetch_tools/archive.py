"""``casefetch archive ...``: list, show, verify, retry, reindex and serve the archive.

The commands read the archive through the Storage interface (local or S3, from the same
settings as the worker) and reach Redis only to re-queue work (retry).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import click
from aiohttp import web
from rich.table import Table

from casefetch import logs
from casefetch.errors import CasefetchError
from casefetch_tools.browse import BrowseSettings, create_app
from casefetch_tools.browse_pages import STATUSES
from casefetch_tools.exits import fail
from casefetch_tools.polling import poll
from casefetch_tools.terminal import (
    console,
    each_with_progress,
    expected_failures,
    human_bytes,
    print_json,
    redis_client,
    settings,
    storage,
)
from worker import archive as layout
from worker.app import build_worker
from worker.catalog import Catalog
from worker.inspection import find_case, list_cases, show_case, verify_file, verify_targets
from worker.manifest import CaseStatus, FileStatus
from worker.page import render_case
from worker.retry import retry_case


def parse_since(value: str | None) -> str | None:
    """``today``, a date or an ISO timestamp, as the prefix manifests' ``updatedAt`` sorts by."""
    if value is None:
        return None
    if value == "today":
        return datetime.now(UTC).strftime("%Y-%m-%dT00:00:00Z")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--since: expected today, YYYY-MM-DD or an ISO timestamp, got {value!r}")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@click.group()
def archive() -> None:
    """Inspect, verify and repair the archive."""


@archive.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only cases with this status.")
@click.option("--since", metavar="WHEN", help="Only cases updated since: today, a date, a time.")
@click.option(
    "--warnings",
    "with_warnings",
    is_flag=True,
    help="Only cases whose manifest lists warnings (whatever their status).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def archive_list(status: str | None, since: str | None, with_warnings: bool, as_json: bool) -> None:
    """One row per case, newest first."""
    threshold = parse_since(since)
    with expected_failures():
        cases = list_cases(storage(), status=status, since=threshold, with_warnings=with_warnings)
    if as_json:
        print_json([case.as_dict() for case in cases])
        return
    out = console()
    table = Table(title=f"{len(cases)} case(s)", title_justify="left")
    for column in ("cfRef", "reportId", "status", "files", "bytes", "issues", "updated"):
        table.add_column(
            column,
            no_wrap=True,
            justify="right" if column in {"files", "bytes", "issues"} else "left",
        )
    for case in cases:
        issues = case.filesFailed + case.warnings
        table.add_row(
            case.cfRef,
            case.reportId or "",
            _status(case.status),
            f"{case.filesStored}/{case.filesTotal}",
            human_bytes(case.bytes),
            str(issues) if issues else "",
            case.updatedAt or "",
        )
    out.print(table)


def _status(status: str) -> str:
    colour = {
        CaseStatus.COMPLETE.value: "green",
        CaseStatus.INCOMPLETE.value: "red",
        CaseStatus.PENDING.value: "yellow",
    }.get(status)
    return f"[{colour}]{status}[/]" if colour else status


@archive.command("show")
@click.argument("cf_ref", metavar="CFREF")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def archive_show(cf_ref: str, as_json: bool) -> None:
    """A case, its items and files (status, size, sha256), warnings and errors."""
    with expected_failures():
        shown = show_case(storage(), cf_ref)
    if as_json:
        print_json(shown)
        return
    out = console()
    manifest = shown["manifest"]
    out.print(
        f"[bold]{manifest.get('cfRef')}[/]  report {manifest.get('reportId')}  "
        f"{_status(str(manifest.get('status')))}  updated {manifest.get('updatedAt')}"
    )
    out.print(f"delivery {manifest.get('deliveryId')}  folder {shown['folder']}", markup=False)
    if shown["history"]:
        out.print(f"earlier deliveries: {', '.join(shown['history'])}", markup=False)
    files = Table(title="files", title_justify="left")
    for column in ("path", "kind", "item", "status", "bytes", "sha256", "tries", "error"):
        files.add_column(column, no_wrap=column == "sha256", overflow="fold")
    for entry in manifest["files"]:
        files.add_row(
            str(entry.get("path")),
            str(entry.get("kind")),
            str(entry.get("itemCfRef") or ""),
            _file_status(entry),
            "" if entry.get("bytes") is None else str(entry["bytes"]),
            str(entry.get("sha256") or ""),
            str(entry.get("attempts") or ""),
            str(entry.get("error") or ""),
        )
    out.print(files)
    if shown["items"]:
        items = Table(title="items", title_justify="left")
        for column in ("#", "cfRef", "stepAction", "file"):
            items.add_column(column)
        for item in shown["items"]:
            entry = item["file"]
            items.add_row(
                str(item["position"]),
                str(item["cfRef"]),
                str(item["stepAction"]),
                f"{entry['path']} ({entry['status']})" if entry else "",
            )
        out.print(items)
    for warning in manifest.get("warnings") or []:
        where = f" {warning['path']}" if warning.get("path") else ""
        out.print(
            f"[yellow]warning[/] item {warning.get('item')} "
            f"({warning.get('itemCfRef')}){where}: {json.dumps(warning.get('errors'))}",
            markup=True,
            highlight=False,
        )


def _file_status(entry: dict[str, Any]) -> str:
    status = str(entry.get("status"))
    return {
        FileStatus.STORED.value: "[green]stored[/]",
        FileStatus.FAILED.value: "[red]failed[/]",
    }.get(status, status)


@archive.command("verify")
@click.argument("cf_ref", metavar="[CFREF]", required=False)
def archive_verify(cf_ref: str | None) -> None:
    """Re-hash every stored file against its manifest; exit 1 on any mismatch or missing file."""
    out = console()
    store = storage()
    with expected_failures():
        targets, problems = verify_targets(store, cf_ref)
        total_bytes = 0
        for target in each_with_progress(targets, "verifying", out):
            problem = verify_file(store, target)
            if problem is not None:
                problems.append(problem)
            total_bytes += int(target.entry.get("bytes") or 0)
    cases = len({t.folder for t in targets})
    for problem in problems:
        click.echo(f"{problem.cfRef}\t{problem.path}\t{problem.problem}")
    summary = (
        f"verified {len(targets)} file(s), {human_bytes(total_bytes)}, in {cases} "
        f"case(s) on {store.describe()}: "
    )
    if problems:
        click.echo(summary + f"{len(problems)} problem(s)", err=True)
        sys.exit(1)
    click.echo(summary + ("all intact" if targets else "no stored file found"))


@archive.command("retry")
@click.argument("cf_ref", metavar="CFREF")
@click.option("--wait", is_flag=True, help="Wait for the case to settle and show its status.")
@click.option("--timeout", default=600.0, show_default=True, help="Longest wait, in seconds.")
def archive_retry(cf_ref: str, wait: bool, timeout: float) -> None:
    """Re-queue the failed downloads of an incomplete case."""
    redis_client()  # a clear message when Redis is down, before anything else
    with expected_failures():
        pipeline = build_worker(settings()).casefetch.runtime.pipeline
        paths = retry_case(pipeline, cf_ref)
    if not paths:
        click.echo(f"{cf_ref}: no failed download to retry")
        return
    click.echo(f"{cf_ref}: re-queued {len(paths)} file(s): {', '.join(paths)}")
    if not wait:
        return

    def settled() -> str | None:
        status = str(find_case(pipeline.storage, cf_ref)[1].get("status"))
        return None if status == CaseStatus.PENDING else status

    with expected_failures():
        status = poll(settled, timeout, interval=0.5)
    if status is None:
        fail(f"{cf_ref}: still pending after {timeout:.0f}s", 1)
    click.echo(f"{cf_ref}: {status}")
    if status != CaseStatus.COMPLETE:
        sys.exit(1)


@archive.command("reindex")
@click.option(
    "--pages",
    is_flag=True,
    help="Also write the index.html of settled cases that have none (cases archived "
    "before pages existed).",
)
def archive_reindex(pages: bool) -> None:
    """Rebuild the catalog of cases (what `archive serve` lists) from the manifests."""
    config = settings()
    catalog = Catalog(config.catalog_path)
    store = storage()
    written: list[str] = []

    def write_missing_page(folder: str, manifest: dict[str, Any], payload: Any) -> None:
        key = layout.case_key(folder, layout.INDEX_HTML)
        if manifest.get("status") != CaseStatus.PENDING and not store.exists(key):
            store.write_bytes(key, render_case(manifest, payload).encode("utf-8"))
            written.append(folder)

    with expected_failures():
        count = catalog.rebuild(store, write_missing_page if pages else None)
    click.echo(
        f"catalogued {count} case(s) in {catalog.path}"
        + (f"; wrote {len(written)} missing page(s)" if pages else "")
    )


@archive.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8081, show_default=True, type=click.IntRange(0, 65535))
def archive_serve(host: str, port: int) -> None:
    """A read-only web page of the archive: cases, search, each case's page, quarantine."""
    try:
        browse = BrowseSettings.from_env()
        browse.check_host(host)
    except CasefetchError as exc:
        fail(str(exc))
    config = settings()
    store = storage()
    catalog = Catalog(config.catalog_path)
    logs.setup("INFO")
    log = logging.getLogger("casefetch_tools.browse")
    if not catalog.exists():
        log.info("no catalog at %s: building it from the manifests", catalog.path)
        with expected_failures():
            catalog.rebuild(store)
    log.info("archive browser on http://%s:%d/ (%s)", host, port, store.describe())
    try:
        web.run_app(
            create_app(store, catalog, browse),
            host=host,
            port=port,
            print=None,
            access_log=None,
            handle_signals=True,
        )
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}", 1)
