"""2. Fetch throughput: casefetch (2 worker processes) against curl, same URLs, same parallelism.

50 cases of one 2 MiB PDF and ten 300 KiB images each, from one local file server. Ours is
timed from the first webhook sent to the last manifest complete; curl from its start until
its files are on disk *durably*: casefetch fsyncs every file and its folder before it counts
it as stored, so curl's files are fsynced too (one by one, then the folder), and that time is
curl's. Rounds alternate which one goes first; medians are compared.

Both leave the machine as they found it for the next round, and in the same way:
- nothing is deleted until the benchmarks end. Each round's files are moved aside instead: on
  ext4 without a journal (this machine's disk) a new inode skips every inode freed in the last
  minute or more (``recently_deleted`` in ext4's ialloc.c), one lookup each, so deleting
  550 to 800 files made the next round's file creations quadratic, whoever ran it (a quarter of
  the workers' CPU in perf);
- no page cache is left behind: casefetch's workers drop a downloaded file's pages once it is
  durable, and curl's are dropped after its timed run.

Each side first fetches one round untimed (its own URLs, the same shape): a worker serves for
days, and the first round of a fresh process measures its start-up (imports finished lazily,
connection pools and threads created, a heap growing from nothing), the kernel's first pages
for the file host and the archive, not what a case costs. curl's first round is as slow.

Every round also reads the CPU time each service spent on it (workers, receiver, Redis, the
file host; this process and the curl it ran): the table's details give it per case, the
median of the rounds, so a run shows where its time went as well as how long it took.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from pathlib import Path

from bench import payloads, pipeline
from bench.fileserver import url
from bench.harness import Bench, BenchError, Result, median, tree_cpu

PDF_BYTES = 2 * 1024 * 1024
IMAGE_BYTES = 300 * 1024
LARGE_FILES = 8
LARGE_BYTES = 32 * 1024 * 1024


def case_urls(
    files: str, prefix: str, cases: int, images: int, pdf_bytes: int, image_bytes: int
) -> list[tuple[str, str, list[str]]]:
    out = []
    for i in range(cases):
        cf_ref = f"{prefix}-{i:03d}"
        out.append(
            (
                cf_ref,
                url(files, f"{cf_ref}/report", "pdf", pdf_bytes),
                [url(files, f"{cf_ref}/photo-{j}", "jpg", image_bytes) for j in range(images)],
            )
        )
    return out


def run_curl(
    bench: Bench, cases: list[tuple[str, str, list[str]]], parallel: int, target: Path
) -> tuple[float, int]:
    target.mkdir(parents=True)
    config = bench.dir / "curl.conf"
    lines = []
    for cf_ref, pdf, images in cases:
        lines += [f'url = "{pdf}"', f'output = "{target}/{cf_ref}.pdf"']
        for j, image in enumerate(images):
            lines += [f'url = "{image}"', f'output = "{target}/{cf_ref}-{j}.jpg"']
    config.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    done = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--parallel",
            "--parallel-max",
            str(parallel),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"curl failed ({done.returncode}): {done.stderr.strip()[:300]}")
    size = 0
    for entry in os.scandir(target):
        fd = os.open(entry.path, os.O_RDONLY)
        try:
            os.fsync(fd)
            size += os.fstat(fd).st_size
        finally:
            os.close(fd)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - started
    # Untimed: give back the page cache curl filled, as casefetch's workers do for every file
    # they store, so the next round (ours or curl's) gets recycled pages too.
    for entry in os.scandir(target):
        fd = os.open(entry.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return elapsed, size


class CpuMeter:
    """CPU seconds spent so far by each service the bench started (its workers together)
    and by this process with the children it waited for (curl)."""

    def __init__(self, bench: Bench) -> None:
        self.pids = {name: child.pid for name, child in bench.procs.named.items()}
        if bench.redis is not None and bench.redis.process is not None:
            self.pids["redis"] = bench.redis.process.pid

    def read(self) -> dict[str, float]:
        spent: dict[str, float] = {}
        for name, pid in self.pids.items():
            group = "workers" if name.startswith("worker") else name
            spent[group] = spent.get(group, 0.0) + tree_cpu(pid)
        own = resource.getrusage(resource.RUSAGE_SELF)
        waited = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent["bench+curl"] = own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime
        return spent


def per_case_ms(before: dict[str, float], after: dict[str, float], cases: int) -> dict[str, float]:
    return {name: (after[name] - before.get(name, 0.0)) * 1000 / cases for name in after}


def run_ours(
    receiver: str, archive: Path, cases: list[tuple[str, str, list[str]]]
) -> tuple[float, int]:
    bodies = [
        payloads.body(payloads.case(cf_ref, pdf, list(images))) for cf_ref, pdf, images in cases
    ]
    started = time.perf_counter()
    pipeline.post_all(receiver, bodies)
    settled = pipeline.wait_settled(archive, [c[0] for c in cases], timeout=300)
    elapsed = time.perf_counter() - started
    return elapsed, pipeline.require_complete(settled)


def compare(
    bench: Bench,
    receiver: str,
    files: str,
    archive: Path,
    rounds: int,
    cases: int,
    images: int,
    pdf_bytes: int,
    image_bytes: int,
    parallel: int,
    prefix: str,
    warm_up: bool = False,
) -> tuple[list[float], list[float], dict[str, dict[str, float]]]:
    """Bytes per second of casefetch and of curl, one pair per round, alternating first;
    and the median CPU milliseconds per case of each service, in each side's rounds."""
    ours: list[float] = []
    theirs: list[float] = []
    cpu: dict[str, list[dict[str, float]]] = {"casefetch": [], "curl": []}
    meter = CpuMeter(bench)
    spent = bench.path("spent")
    expected = cases * (pdf_bytes + images * image_bytes)
    # (name, which side goes first, timed)
    schedule = [("warm-up", (True, False), False)] if warm_up else []
    schedule += [
        (str(n), (True, False) if n % 2 == 0 else (False, True), True) for n in range(rounds)
    ]
    for round_, order, timed in schedule:
        batch = case_urls(files, f"{prefix}-{round_}", cases, images, pdf_bytes, image_bytes)
        for is_ours in order:
            before = meter.read()
            if is_ours:
                seconds, size = run_ours(receiver, archive, batch)
                os.replace(archive / "cases", spent / f"ours-{prefix}-{round_}")
            else:
                seconds, size = run_curl(bench, batch, parallel, spent / f"curl-{prefix}-{round_}")
            if size != expected:
                raise BenchError(f"fetched {size} bytes, expected {expected}")
            if timed:
                (ours if is_ours else theirs).append(size / seconds)
                cpu["casefetch" if is_ours else "curl"].append(
                    per_case_ms(before, meter.read(), cases)
                )
    return ours, theirs, {side: _medians(rows) for side, rows in cpu.items()}


def _medians(rows: list[dict[str, float]]) -> dict[str, float]:
    names = rows[0] if rows else {}
    return {name: round(median([row[name] for row in rows]), 1) for name in names}


def run(
    bench: Bench,
    receiver: str,
    files: str,
    archive: Path,
    rounds: int = 3,
    cases: int = 50,
    images: int = 10,
    pdf_bytes: int = PDF_BYTES,
    image_bytes: int = IMAGE_BYTES,
    parallel: int = 16,
    large_bytes: int = LARGE_BYTES,
) -> list[Result]:
    ours, theirs, cpu = compare(
        bench,
        receiver,
        files,
        archive,
        rounds,
        cases,
        images,
        pdf_bytes,
        image_bytes,
        parallel,
        "FETCH",
        warm_up=True,
    )
    mine, curl = median(ours), median(theirs)
    ratio = mine / curl
    total = cases * (pdf_bytes + images * image_bytes)
    results = [
        Result(
            "2. fetch throughput vs curl (+fsync)",
            mine / 2**20,
            curl / 2**20,
            "MiB/s",
            ratio,
            "≥ 0.7x",
            ratio >= 0.7,
            f"{cases} cases, {total / 2**20:.0f} MiB, parallelism {parallel}",
            {
                "ours_MiB_s": [round(v / 2**20, 1) for v in ours],
                "curl_MiB_s": [round(v / 2**20, 1) for v in theirs],
                "bytes": total,
                "cpu_ms_per_case": cpu,
            },
        )
    ]
    # The same comparison with few large files: what is left is the cost per byte, not per
    # file (Celery task, bookkeeping, two fsyncs).
    big_ours, big_theirs, _ = compare(
        bench, receiver, files, archive, 2, LARGE_FILES, 0, large_bytes, 0, parallel, "LARGE"
    )
    big_mine, big_curl = median(big_ours), median(big_theirs)
    results.append(
        Result(
            f"2. fetch, {LARGE_FILES} x {large_bytes / 2**20:g} MiB PDFs, vs curl",
            big_mine / 2**20,
            big_curl / 2**20,
            "MiB/s",
            big_mine / big_curl,
            "info",
            True,
            "per-byte cost only",
        )
    )
    return results
