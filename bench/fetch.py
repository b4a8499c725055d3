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
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bench import payloads, pipeline
from bench.fileserver import url
from bench.harness import Bench, BenchError, Result, median

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
) -> tuple[list[float], list[float]]:
    """Bytes per second of casefetch and of curl, one pair per round, alternating first."""
    ours: list[float] = []
    theirs: list[float] = []
    spent = bench.path("spent")
    expected = cases * (pdf_bytes + images * image_bytes)
    for round_ in range(rounds):
        batch = case_urls(files, f"{prefix}-{round_}", cases, images, pdf_bytes, image_bytes)
        for is_ours in (True, False) if round_ % 2 == 0 else (False, True):
            if is_ours:
                seconds, size = run_ours(receiver, archive, batch)
                ours.append(size / seconds)
                os.replace(archive / "cases", spent / f"ours-{prefix}-{round_}")
            else:
                seconds, size = run_curl(bench, batch, parallel, spent / f"curl-{prefix}-{round_}")
                theirs.append(size / seconds)
            if size != expected:
                raise BenchError(f"fetched {size} bytes, expected {expected}")
    return ours, theirs


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
    ours, theirs = compare(
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
            },
        )
    ]
    # The same comparison with few large files: what is left is the cost per byte, not per
    # file (Celery task, bookkeeping, two fsyncs).
    big_ours, big_theirs = compare(
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
