"""The catalog's SQLite file under several writers."""

from __future__ import annotations

import threading
from pathlib import Path

from worker.catalog import Catalog, Query, Row


def test_the_first_writers_of_a_new_catalog_all_keep_their_rows(tmp_path: Path) -> None:
    # Worker threads settling cases at once on a catalog that does not exist yet: each makes
    # the table if it finds none, and none may drop a row another has written meanwhile.
    for trial in range(10):
        catalog = Catalog(tmp_path / f"{trial}.sqlite")
        start = threading.Barrier(8)

        def settle(n: int, catalog: Catalog = catalog, start: threading.Barrier = start) -> None:
            start.wait()
            catalog.record(
                Row(
                    f"cases/CF-{n}",
                    f"CF-{n}",
                    None,
                    "complete",
                    1,
                    1,
                    0,
                    0,
                    10,
                    "2026-12-07T10:00:00Z",
                    None,
                    f"d-{n}",
                )
            )

        threads = [threading.Thread(target=settle, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert catalog.search(Query())[1] == 8, f"trial {trial}"


def test_rows_are_recorded_without_creating_a_file_each(tmp_path: Path) -> None:
    # The journal stays between transactions: a journal created and deleted per row costs
    # every file created after it on ext4 without a journal (docs/benchmarks.md, issue 18).
    catalog = Catalog(tmp_path / "index.sqlite")

    def row(n: int) -> Row:
        return Row(
            f"cases/CF-{n}", f"CF-{n}", None, "complete", 1, 1, 0, 0, 10, None, None, f"d-{n}"
        )

    catalog.record(row(1))
    journal = tmp_path / "index.sqlite-journal"
    inode = journal.stat().st_ino
    for n in range(2, 6):
        catalog.record(row(n))
    assert journal.stat().st_ino == inode
    assert catalog.search(Query())[1] == 5
