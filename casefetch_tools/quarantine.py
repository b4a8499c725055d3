"""``casefetch quarantine ...``: list, show and replay the deliveries that could not be archived."""

from __future__ import annotations

from collections.abc import Callable

import click
from rich.console import Console
from rich.table import Table

from casefetch.protocol import delivery_body
from casefetch_tools.exits import fail
from casefetch_tools.terminal import (
    console,
    each_with_progress,
    expected_failures,
    print_json,
    redis_client,
    storage,
)
from worker.quarantine import list_records, read_record, record_ids, replay, summarise


@click.group()
def quarantine() -> None:
    """Inspect and replay quarantined deliveries."""


@quarantine.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def quarantine_list(as_json: bool) -> None:
    """One row per quarantined delivery, newest first."""
    with expected_failures():
        records = list_records(storage())
    if as_json:
        print_json(records)
        return
    table = Table(
        title=f"{len(records)} quarantined deliver{'y' if len(records) == 1 else 'ies'}",
        title_justify="left",
    )
    for column in ("deliveryId", "receivedAt", "reason", "bytes", "errors"):
        table.add_column(column, no_wrap=column != "errors", overflow="fold")
    for record in records:
        errors = record["errors"]
        shown = "; ".join(errors[:3]) + (f" (+{len(errors) - 3})" if len(errors) > 3 else "")
        table.add_row(
            str(record["deliveryId"]),
            str(record["receivedAt"]),
            str(record["reason"]),
            str(record["bytes"]),
            shown,
        )
    console().print(table, markup=False)


@quarantine.command("show")
@click.argument("delivery_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def quarantine_show(delivery_id: str, as_json: bool) -> None:
    """A quarantined delivery: why, when, its headers and its raw body."""
    with expected_failures():
        record = read_record(storage(), delivery_id)
    if as_json:
        print_json(record)
        return
    summary = summarise(record)
    out = console()
    out.print(
        f"delivery {summary['deliveryId']}  received {summary['receivedAt']}  "
        f"reason {summary['reason']}",
        markup=False,
        highlight=False,
    )
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
