"""The catalog: one row per case in a small SQLite file, so that listing and searching the
archive never reads every manifest.

The manifests stay the truth; the catalog is derived from them. A worker updates a case's row
when the case settles; ``casefetch archive reindex`` rebuilds the whole file from the
manifests when it is lost or stale (and ``archive serve`` does so when it starts without one).
Each thread keeps its own connection: calls come from several worker threads and processes,
and SQLite's own locking (with a busy timeout) serialises the writers. A damaged or deleted
file is rebuilt by ``reindex``; the workers then write to the new one.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import NotFound
from worker.inspection import CaseSummary, case_folders, read_manifest, read_payload, summarise
from worker.manifest import Manifest
from worker.storage import Storage

#: Bumped when the table changes: an older file is then rebuilt, not misread.
SCHEMA_VERSION = 1
BUSY_TIMEOUT_SECONDS = 10.0
#: What a kept journal shrinks back to after a large transaction (a rebuild).
JOURNAL_SIZE_LIMIT = 1024 * 1024

#: What :meth:`Catalog.rebuild` calls with each case it reads: (folder, manifest, payload).
Visit = Callable[[str, Manifest, Any], None]

_COLUMNS = (
    "folder",
    "cfRef",
    "reportId",
    "status",
    "filesStored",
    "filesTotal",
    "filesFailed",
    "warnings",
    "bytes",
    "updatedAt",
    "createdAt",
    "deliveryId",
)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS cases (
    folder TEXT PRIMARY KEY, cfRef TEXT NOT NULL, reportId TEXT, status TEXT NOT NULL,
    filesStored INTEGER NOT NULL, filesTotal INTEGER NOT NULL, filesFailed INTEGER NOT NULL,
    warnings INTEGER NOT NULL, bytes INTEGER NOT NULL, updatedAt TEXT, createdAt TEXT,
    deliveryId TEXT);
CREATE INDEX IF NOT EXISTS cases_updated ON cases (updatedAt DESC, cfRef DESC);
CREATE INDEX IF NOT EXISTS cases_status ON cases (status, updatedAt DESC);
PRAGMA user_version = {SCHEMA_VERSION};
"""


@dataclass(frozen=True)
class Row:
    """A case as the catalog lists it."""

    folder: str
    cfRef: str
    reportId: str | None
    status: str
    filesStored: int
    filesTotal: int
    filesFailed: int
    warnings: int
    bytes: int
    updatedAt: str | None
    createdAt: str | None
    deliveryId: str | None

    @property
    def name(self) -> str:
        """The case's folder name under ``cases/``."""
        return self.folder.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Query:
    """What the list shows: filters (each optional) and one page of the result."""

    status: str | None = None
    #: ``updatedAt`` bounds, as ISO prefixes: ``since`` inclusive, ``before`` exclusive.
    since: str | None = None
    before: str | None = None
    #: Part of a cfRef or a reportId, any case.
    text: str | None = None
    offset: int = 0
    limit: int = 50


def row_for(folder: str, manifest: Manifest, payload: Any) -> Row:
    summary: CaseSummary = summarise(folder, manifest)
    created = payload.get("createdAt") if isinstance(payload, dict) else None
    return Row(
        folder=folder,
        cfRef=_storable(summary.cfRef),
        reportId=None if summary.reportId is None else _storable(str(summary.reportId)),
        status=summary.status,
        filesStored=summary.filesStored,
        filesTotal=summary.filesTotal,
        filesFailed=summary.filesFailed,
        warnings=summary.warnings,
        bytes=summary.bytes,
        updatedAt=summary.updatedAt,
        createdAt=_storable(created) if isinstance(created, str) else None,
        deliveryId=summary.deliveryId,
    )


def _storable(text: str) -> str:
    """SQLite stores UTF-8: a lone surrogate (JSON allows one) is kept as its escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _create_schema(connection: sqlite3.Connection) -> None:
    """The table, unless another thread or process made it meanwhile: the version is read
    again under the write lock, or a second first writer would drop the rows of the first."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        if connection.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            connection.execute("DROP TABLE IF EXISTS cases")
            for statement in _SCHEMA.split(";"):  # not executescript: it would commit first
                if statement.strip():
                    connection.execute(statement)
        connection.commit()
    except BaseException:
        connection.rollback()
        raise


class Catalog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A transaction on this thread's connection (opened once, reopened when the file
        was deleted or replaced)."""
        connection = self._connection()
        with connection:
            yield connection

    def _connection(self) -> sqlite3.Connection:
        try:
            inode: int | None = self.path.stat().st_ino
        except FileNotFoundError:
            inode = None
        kept: tuple[sqlite3.Connection, int] | None = getattr(self._local, "kept", None)
        if kept is not None and kept[1] == inode:
            return kept[0]
        if kept is not None:
            kept[0].close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS)
        # A rollback journal, not a write-ahead log: the catalog is one file, which can be
        # deleted or replaced under running workers (a WAL file, shared by name, would then
        # be checkpointed or removed by connections to the old one). And no fsync, the most
        # of a row's cost (docs/benchmarks.md#the-archive-browser-issue-16); a process crash
        # still cannot tear a transaction, and after a power cut `casefetch archive reindex`
        # rebuilds what the manifests say. The journal is kept between transactions (its
        # header zeroed), not created and deleted by each: on ext4 without a journal, every
        # inode freed is one that every new file of the next minutes steps over
        # (docs/benchmarks.md#issue-18-fetch-on-a-disk-that-just-deleted-files).
        connection.execute("PRAGMA journal_mode = PERSIST")
        connection.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        connection.execute("PRAGMA synchronous = OFF")
        if connection.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            _create_schema(connection)
        self._local.kept = (connection, self.path.stat().st_ino)
        return connection

    def exists(self) -> bool:
        return self.path.is_file()

    def record(self, row: Row) -> None:
        """Add or replace one case's row."""
        with self._connect() as db:
            _upsert(db, [row])

    def rebuild(self, storage: Storage, visit: Visit | None = None) -> int:
        """Replace every row with what the manifests say now; return how many cases.
        ``visit`` is called with each case read on the way (folder, manifest, payload)."""
        rows = list(_rows_from(storage, visit))
        try:
            self._replace(rows)
        except sqlite3.DatabaseError:  # a file damaged (power cut) or not SQLite: start over
            self._local.__dict__.pop("kept", None)
            for suffix in ("", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    self.path.with_name(self.path.name + suffix).unlink()
            self._replace(rows)
        return len(rows)

    def _replace(self, rows: list[Row]) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM cases")
            _upsert(db, rows)

    def search(self, query: Query) -> tuple[list[Row], int]:
        """One page of cases, newest update first, and how many match in all."""
        where, params = _where(query)
        with self._connect() as db:
            total = db.execute(f"SELECT count(*) FROM cases {where}", params).fetchone()[0]
            found = db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM cases {where} "
                "ORDER BY updatedAt DESC, cfRef DESC LIMIT ? OFFSET ?",
                [*params, query.limit, query.offset],
            ).fetchall()
        return [Row(*values) for values in found], int(total)


def _where(query: Query) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if query.status:
        clauses.append("status = ?")
        params.append(query.status)
    if query.since:
        clauses.append("updatedAt >= ?")
        params.append(query.since)
    if query.before:
        clauses.append("updatedAt < ?")
        params.append(query.before)
    if query.text:
        pattern = (
            "%" + query.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        )
        clauses.append("(cfRef LIKE ? ESCAPE '\\' OR reportId LIKE ? ESCAPE '\\')")
        params += [pattern, pattern]
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def _upsert(db: sqlite3.Connection, rows: Iterable[Row]) -> None:
    db.executemany(
        f"INSERT OR REPLACE INTO cases ({', '.join(_COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in _COLUMNS)})",
        [tuple(getattr(row, column) for column in _COLUMNS) for row in rows],
    )


def _rows_from(storage: Storage, visit: Visit | None) -> Iterator[Row]:
    for folder in case_folders(storage):
        try:
            manifest = read_manifest(storage, folder)
        except (NotFound, ValueError):
            continue  # removed meanwhile, or unreadable: `archive verify` reports those
        payload = read_payload(storage, folder)
        if visit is not None:
            visit(folder, manifest, payload)
        yield row_for(folder, manifest, payload)
