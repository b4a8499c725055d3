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
