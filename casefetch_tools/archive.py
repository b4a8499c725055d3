"""``casefetch archive ...`` and ``casefetch quarantine ...``: what operators run.

The commands read the archive through the Storage interface (local or S3, from the same
settings as the worker) and reach Redis only to re-queue work (retry, replay).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from casefetch.config import redact_url
from casefetch.errors import CasefetchError
from casefetch_tools.polling import poll

if TYPE_CHECKING:
    from worker.settings import WorkerSettings
    from worker.storage import Storage

T = TypeVar("T")
STATUSES = ("complete", "incomplete", "pending")


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"casefetch: {message}", err=True)
    sys.exit(code)


def console() -> Console:
    """Rich on a terminal; wide, colourless plain text otherwise (sha256 must not be cut)."""
    out = Console()
    return out if out.is_terminal else Console(width=240, no_color=True, highlight=False)


def settings() -> WorkerSettings:
    from worker.settings import WorkerSettings

    try:
        return WorkerSettings.from_env()
    except CasefetchError as exc:
        fail(str(exc))


@contextlib.contextmanager
def expected_failures() -> Iterator[None]:
    """Turn the failures an operator can meet (bad input, missing service) into one line."""
    import redis

    from worker.bookkeeping import Busy

    try:
        yield
    except Busy:
        fail("the case is being worked on right now; try again in a moment", 1)
    except redis.exceptions.RedisError as exc:
        fail(f"cannot use Redis: {exc}", 1)
    except CasefetchError as exc:
        fail(str(exc), 1)
    except OSError as exc:
        fail(f"cannot read the archive: {exc}", 1)
    except sqlite3.Error as exc:
        fail(f"cannot use the catalog of cases: {exc}", 1)
    except Exception as exc:
        # An S3 failure the backend did not translate (without importing botocore up front).
        if type(exc).__module__.startswith(("botocore", "boto3")):
            fail(f"cannot use S3: {exc}", 1)
        raise


def storage() -> Storage:
    from worker.storage import make_storage

    with expected_failures():
        return make_storage(settings())
    raise AssertionError("unreachable")


def redis_client() -> Any:
    import redis

    client = redis.Redis.from_url(settings().redis_url, socket_timeout=10,
                                  socket_connect_timeout=5)
    try:
        client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        fail(f"cannot reach Redis at {redact_url(settings().redis_url)}: {exc}", 1)
    return client


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def each_with_progress(items: Sequence[T], label: str, out: Console) -> Iterator[T]:
    """Yield ``items``, with a progress bar on a terminal and nothing extra otherwise."""
    if not out.is_terminal or len(items) < 2:
        yield from items
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=out, transient=True) as progress:
        task = progress.add_task(label, total=len(items))
        for item in items:
            yield item
            progress.advance(task)


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


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


# -- archive ----------------------------------------------------------------------------------

@click.group()
def archive() -> None:
    """Inspect, verify and repair the archive."""


@archive.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only cases with this status.")
@click.option("--since", metavar="WHEN", help="Only cases updated since: today, a date, a time.")
@click.option("--warnings", "with_warnings", is_flag=True,
              help="Only cases whose manifest lists warnings (whatever their status).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def archive_list(status: str | None, since: str | None, with_warnings: bool,
                 as_json: bool) -> None:
    """One row per case, newest first."""
    from worker.inspection import list_cases

    threshold = parse_since(since)
    with expected_failures():
        cases = list_cases(storage(), status=status, since=threshold,
                           with_warnings=with_warnings)
    if as_json:
        print_json([case.as_dict() for case in cases])
        return
    out = console()
    table = Table(title=f"{len(cases)} case(s)", title_justify="left")
    for column in ("cfRef", "reportId", "status", "files", "bytes", "issues", "updated"):
        table.add_column(column, no_wrap=True,
                         justify="right" if column in {"files", "bytes", "issues"} else "left")
    for case in cases:
        issues = case.filesFailed + case.warnings
        table.add_row(case.cfRef, case.reportId or "", _status(case.status),
                      f"{case.filesStored}/{case.filesTotal}", human_bytes(case.bytes),
                      str(issues) if issues else "", case.updatedAt or "")
    out.print(table)


def _status(status: str) -> str:
    colour = {"complete": "green", "incomplete": "red", "pending": "yellow"}.get(status)
    return f"[{colour}]{status}[/]" if colour else status


@archive.command("show")
@click.argument("cf_ref", metavar="CFREF")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def archive_show(cf_ref: str, as_json: bool) -> None:
    """A case, its items and files (status, size, sha256), warnings and errors."""
    from worker.inspection import show_case

    with expected_failures():
        shown = show_case(storage(), cf_ref)
    if as_json:
        print_json(shown)
        return
    out = console()
    manifest = shown["manifest"]
    out.print(f"[bold]{manifest.get('cfRef')}[/]  report {manifest.get('reportId')}  "
              f"{_status(str(manifest.get('status')))}  updated {manifest.get('updatedAt')}")
    out.print(f"delivery {manifest.get('deliveryId')}  folder {shown['folder']}", markup=False)
    if shown["history"]:
        out.print(f"earlier deliveries: {', '.join(shown['history'])}", markup=False)
    files = Table(title="files", title_justify="left")
    for column in ("path", "kind", "item", "status", "bytes", "sha256", "tries", "error"):
        files.add_column(column, no_wrap=column == "sha256", overflow="fold")
    for entry in manifest["files"]:
        files.add_row(str(entry.get("path")), str(entry.get("kind")),
                      str(entry.get("itemCfRef") or ""), _file_status(entry),
                      "" if entry.get("bytes") is None else str(entry["bytes"]),
                      str(entry.get("sha256") or ""), str(entry.get("attempts") or ""),
                      str(entry.get("error") or ""))
    out.print(files)
    if shown["items"]:
        items = Table(title="items", title_justify="left")
        for column in ("#", "cfRef", "stepAction", "file"):
            items.add_column(column)
        for item in shown["items"]:
            entry = item["file"]
            items.add_row(str(item["position"]), str(item["cfRef"]), str(item["stepAction"]),
                          f"{entry['path']} ({entry['status']})" if entry else "")
        out.print(items)
    for warning in manifest.get("warnings") or []:
        where = f" {warning['path']}" if warning.get("path") else ""
        out.print(f"[yellow]warning[/] item {warning.get('item')} "
                  f"({warning.get('itemCfRef')}){where}: {json.dumps(warning.get('errors'))}",
                  markup=True, highlight=False)


def _file_status(entry: dict[str, Any]) -> str:
    status = str(entry.get("status"))
    return {"stored": "[green]stored[/]", "failed": "[red]failed[/]"}.get(status, status)


@archive.command("verify")
@click.argument("cf_ref", metavar="[CFREF]", required=False)
def archive_verify(cf_ref: str | None) -> None:
    """Re-hash every stored file against its manifest; exit 1 on any mismatch or missing file."""
    from worker.inspection import verify_file, verify_targets

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
    summary = (f"verified {len(targets)} file(s), {human_bytes(total_bytes)}, in {cases} "
               f"case(s) on {store.describe()}: ")
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
    from worker.celery_app import create_celery_app
    from worker.inspection import find_case
    from worker.retry import retry_case

    redis_client()  # a clear message when Redis is down, before anything else
    with expected_failures():
        pipeline = create_celery_app(settings()).runtime.pipeline
        paths = retry_case(pipeline, cf_ref)
    if not paths:
        click.echo(f"{cf_ref}: no failed download to retry")
        return
    click.echo(f"{cf_ref}: re-queued {len(paths)} file(s): {', '.join(paths)}")
    if not wait:
        return

    def settled() -> str | None:
        status = str(find_case(pipeline.storage, cf_ref)[1].get("status"))
        return None if status == "pending" else status

    with expected_failures():
        status = poll(settled, timeout, interval=0.5)
    if status is None:
        fail(f"{cf_ref}: still pending after {timeout:.0f}s", 1)
    click.echo(f"{cf_ref}: {status}")
    if status != "complete":
        sys.exit(1)


@archive.command("reindex")
@click.option("--pages", is_flag=True,
              help="Also write the index.html of settled cases that have none (cases archived "
                   "before pages existed).")
def archive_reindex(pages: bool) -> None:
    """Rebuild the catalog of cases (what `archive serve` lists) from the manifests."""
    from worker import archive as layout
    from worker.catalog import Catalog
    from worker.page import render_case

    config = settings()
    catalog = Catalog(config.catalog_path)
    store = storage()
    written: list[str] = []

    def write_missing_page(folder: str, manifest: dict[str, Any], payload: Any) -> None:
        key = layout.case_key(folder, layout.INDEX_HTML)
        if manifest.get("status") != "pending" and not store.exists(key):
            store.write_bytes(key, render_case(manifest, payload).encode("utf-8"))
            written.append(folder)

    with expected_failures():
        count = catalog.rebuild(store, write_missing_page if pages else None)
    click.echo(f"catalogued {count} case(s) in {catalog.path}"
               + (f"; wrote {len(written)} missing page(s)" if pages else ""))


@archive.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8081, show_default=True, type=click.IntRange(0, 65535))
def archive_serve(host: str, port: int) -> None:
    """A read-only web page of the archive: cases, search, each case's page, quarantine."""
    import logging

    from aiohttp import web

    from casefetch import logs
    from casefetch_tools.browse import BrowseSettings, create_app
    from worker.catalog import Catalog

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
        web.run_app(create_app(store, catalog, browse), host=host, port=port, print=None,
                    access_log=None, handle_signals=True)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}", 1)


# -- quarantine -------------------------------------------------------------------------------

@click.group()
def quarantine() -> None:
    """Inspect and replay quarantined deliveries."""


@quarantine.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def quarantine_list(as_json: bool) -> None:
    """One row per quarantined delivery, newest first."""
    from worker.quarantine import list_records

    with expected_failures():
        records = list_records(storage())
    if as_json:
        print_json(records)
        return
    table = Table(title=f"{len(records)} quarantined deliver{'y' if len(records) == 1 else 'ies'}",
                  title_justify="left")
    for column in ("deliveryId", "receivedAt", "reason", "bytes", "errors"):
        table.add_column(column, no_wrap=column != "errors", overflow="fold")
    for record in records:
        errors = record["errors"]
        shown = "; ".join(errors[:3]) + (f" (+{len(errors) - 3})" if len(errors) > 3 else "")
        table.add_row(str(record["deliveryId"]), str(record["receivedAt"]),
                      str(record["reason"]), str(record["bytes"]), shown)
    console().print(table, markup=False)


@quarantine.command("show")
@click.argument("delivery_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def quarantine_show(delivery_id: str, as_json: bool) -> None:
    """A quarantined delivery: why, when, its headers and its raw body."""
    from casefetch.protocol import delivery_body
    from worker.quarantine import read_record, summarise

    with expected_failures():
        record = read_record(storage(), delivery_id)
    if as_json:
        print_json(record)
        return
    summary = summarise(record)
    out = console()
    out.print(f"delivery {summary['deliveryId']}  received {summary['receivedAt']}  "
              f"reason {summary['reason']}", markup=False, highlight=False)
    if summary["replayOf"]:
        out.print(f"replay of {summary['replayOf']}", markup=False)
    for line in summary["errors"]:
        out.print(f"  error: {line}", markup=False, highlight=False)
    for name, value in (record.get("headers") or {}).items():
        out.print(f"  {name}: {value}", markup=False, highlight=False)
    body = delivery_body(record)
    click.echo(f"body ({len(body)} bytes):")
    click.echo(body.decode("utf-8", "backslashreplace"))


@quarantine.command("replay")
@click.argument("delivery_id", metavar="ID", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every quarantined delivery.")
def quarantine_replay(delivery_id: str | None, replay_all: bool) -> None:
    """Re-enqueue quarantined bodies as new deliveries (the old record is then removed)."""
    from worker.quarantine import record_ids, replay

    if bool(delivery_id) == replay_all:
        fail("give one ID or --all")
    store = storage()
    client = redis_client()
    out = console()
    with expected_failures():
        ids = record_ids(store) if replay_all else [str(delivery_id)]
        done = _replay_each(ids, lambda old: replay(store, client, old), out)
    click.echo(f"replayed {done} deliver{'y' if done == 1 else 'ies'}")


def _replay_each(ids: list[str], replay_one: Callable[[str], str], out: Console) -> int:
    done = 0
    for old in each_with_progress(ids, "replaying", out):
        new = replay_one(old)
        done += 1
        click.echo(f"{old} -> {new}")
    return done
