"""casefetch's download engine alone: the fetch benchmark's reference for what the downloads
themselves cost, without the pipeline around them.

The worker's own :class:`~worker.download.Fetcher` and :class:`~worker.storage.LocalStorage`
do the same work per file as in a worker (the address guard, the request, sniffing, SHA-256,
the staged write, its fsync, dropping its pages, the rename; one sync per folder), on
``--parallel`` threads of one process, with no queue, no Redis, no manifest, no log line.
The fetch benchmark's time minus this one's is what the pipeline around the downloads costs
(Celery, the bookkeeping, the manifests and the page, the logs).

A long-lived process, started once (its imports are not a round's): it reads one round per
line on stdin, a JSON list of ``[key, kind, url]``, fetches them, and answers one line,
``{"seconds", "bytes"}``. (Its CPU is read from outside, as every service's is.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from worker.download import Fetcher
from worker.settings import WorkerSettings
from worker.sniff import FileKind, FileType
from worker.storage import LocalStorage


def fetch_round(
    fetcher: Fetcher, storage: LocalStorage, jobs: list[list[str]], pool: ThreadPoolExecutor
) -> int:
    def one(job: list[str]) -> tuple[str, int]:
        key, kind, url = job

        def key_for(file_type: FileType) -> str:
            return key if kind == FileKind.CASE_PDF else f"{key}.{file_type.extension}"

        result, staged = fetcher.fetch_staged(url, FileKind(kind), storage, key_for)
        staged.commit(sync_folder=False)
        return staged.key, result.size

    done = list(pool.map(one, jobs))
    storage.sync_folders(key for key, _ in done)
    return sum(size for _, size in done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--parallel", type=int, default=16)
    args = parser.parse_args()
    storage = LocalStorage(args.archive)
    # One pool for every round, as a worker keeps its file threads: starting threads is not
    # a round's work.
    with (
        Fetcher(WorkerSettings.from_env().download) as fetcher,
        ThreadPoolExecutor(args.parallel) as pool,
    ):
        for line in sys.stdin:
            jobs = json.loads(line)
            started = time.perf_counter()
            size = fetch_round(fetcher, storage, jobs, pool)
            print(json.dumps({"seconds": time.perf_counter() - started, "bytes": size}), flush=True)


if __name__ == "__main__":
    main()
