"""What every operator command shares: one-line failures, the console, and the worker's
settings, storage and Redis as a command opens them."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import click
import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from casefetch.errors import CasefetchError
from casefetch_tools.exits import fail
from worker.app import make_storage
from worker.bookkeeping import Busy
from worker.settings import WorkerSettings
from worker.storage import Storage

T = TypeVar("T")


def console() -> Console:
    """Rich on a terminal; wide, colourless plain text otherwise (sha256 must not be cut)."""
    out = Console()
    return out if out.is_terminal else Console(width=240, no_color=True, highlight=False)


def settings() -> WorkerSettings:
    try:
        return WorkerSettings.from_env()
    except CasefetchError as exc:
        fail(str(exc))


@contextlib.contextmanager
def expected_failures() -> Iterator[None]:
    """Turn the failures an operator can meet (bad input, missing service) into one line."""
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
    with expected_failures():
        return make_storage(settings())
    raise AssertionError("unreachable")


def redis_client() -> redis.Redis:
    target = settings().redis
    client = target.client(socket_timeout=10, socket_connect_timeout=5)
    try:
        client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        fail(f"cannot reach Redis at {target.describe()}: {exc}", 1)
    return client


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def each_with_progress(items: Sequence[T], label: str, out: Console) -> Iterator[T]:
    """Yield ``items``, with a progress bar on a terminal and nothing extra otherwise."""
    if not out.is_terminal or len(items) < 2:
        yield from items
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
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
