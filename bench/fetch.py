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

A third side takes its turn in the same rounds: casefetch's download engine alone
(:mod:`bench.engine`), the same work per file without the pipeline around it. Its row splits
casefetch's gap to curl in two: what the downloads cost, and what the rest adds.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench import payloads, pipeline
from bench.fileserver import url
from bench.harness import Bench, BenchError, Result, median, tree_cpu

PDF_BYTES = 2 * 1024 * 1024
IMAGE_BYTES = 300 * 1024
LARGE_FILES = 8
LARGE_BYTES = 32 * 1024 * 1024

#: A round's cases: (cfRef, PDF URL, image URLs).
Cases = list[tuple[str, str, list[str]]]


def case_urls(
    files: str, prefix: str, cases: int, images: int, pdf_bytes: int, image_bytes: int
) -> Cases:
    out: Cases = []
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


def run_curl(bench: Bench, cases: Cases, parallel: int, target: Path) -> tuple[float, int]:
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
    """CPU seconds spent so far by each service the bench runs (its workers together; those
    that stopped before the meter was made are left out) and by this process with the
    children it waited for (curl)."""

    def __init__(self, bench: Bench) -> None:
        self.pids = {
            name: child.pid for name, child in bench.procs.named.items() if child.poll() is None
        }
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


def run_ours(receiver: str, archive: Path, cases: Cases) -> tuple[float, int]:
    bodies = [
        payloads.body(payloads.case(cf_ref, pdf, list(images))) for cf_ref, pdf, images in cases
    ]
    started = time.perf_counter()
    pipeline.post_all(receiver, bodies)
    settled = pipeline.wait_settled(archive, [c[0] for c in cases], timeout=300)
    elapsed = time.perf_counter() - started
    return elapsed, pipeline.require_complete(settled)


#: One side of the comparison: fetch a round's cases (its label names its leftovers);
#: seconds taken and bytes fetched.
Side = Callable[[Cases, str], tuple[float, int]]


class Engine:
    """bench/engine.py (casefetch's download engine alone), started once, a round a call."""

    def __init__(self, bench: Bench, parallel: int) -> None:
        self.archive = bench.path("engine")
        self.spent = bench.path("spent")
        argv = [bench.python, "-m", "bench.engine", "--archive", str(self.archive)]
        self.child = bench.procs.start(
            "engine", [*argv, "--parallel", str(parallel)], bench.env(), pipes=True
        )

    def run(self, cases: Cases, label: str) -> tuple[float, int]:
        jobs = []
        for cf_ref, pdf, images in cases:
            jobs.append([f"cases/{cf_ref}/case.pdf", "case_pdf", pdf])
            jobs += [
                [f"cases/{cf_ref}/items/{j:03d}-IT-{j}", "item_image", image]
                for j, image in enumerate(images, 1)
            ]
        assert self.child.stdin is not None and self.child.stdout is not None
        self.child.stdin.write(json.dumps(jobs).encode() + b"\n")
        self.child.stdin.flush()
        line = self.child.stdout.readline()
        if not line:
            raise BenchError(f"the download engine exited ({self.child.wait()})")
        answer = json.loads(line)
        os.replace(self.archive / "cases", self.spent / f"engine-{label}")
        return float(answer["seconds"]), int(answer["bytes"])


def compare(
    bench: Bench,
    sides: dict[str, Side],
    batch_for: Callable[[str], Cases],
    rounds: int,
    expected: int,
    warm_up: bool = False,
) -> tuple[dict[str, list[float]], dict[str, dict[str, float]]]:
    """Bytes per second of each side, one per round, the order rotating every round (the
    first side first in the untimed warm-up round); and the median CPU milliseconds per
    case of each service in each side's rounds."""
    names = list(sides)
    speeds: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    meter = CpuMeter(bench)
    # (label, order of the sides, timed)
    schedule = [("warm-up", names, False)] if warm_up else []
    schedule += [
        (str(n), names[n % len(names) :] + names[: n % len(names)], True) for n in range(rounds)
    ]
    for label, order, timed in schedule:
        batch = batch_for(label)
        for name in order:
            before = meter.read()
            seconds, size = sides[name](batch, label)
            if size != expected:
                raise BenchError(f"{name} fetched {size} bytes, expected {expected}")
            if timed:
                speeds[name].append(size / seconds)
                cpu[name].append(per_case_ms(before, meter.read(), len(batch)))
    return speeds, {name: _medians(rows) for name, rows in cpu.items()}


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
    spent = bench.path("spent")

    def sides(prefix: str) -> dict[str, Side]:
        def ours(batch: Cases, label: str) -> tuple[float, int]:
            measured = run_ours(receiver, archive, batch)
            os.replace(archive / "cases", spent / f"ours-{prefix}-{label}")
            return measured

        def curl(batch: Cases, label: str) -> tuple[float, int]:
            return run_curl(bench, batch, parallel, spent / f"curl-{prefix}-{label}")

        return {"casefetch": ours, "curl": curl}

    engine = Engine(bench, parallel)
    total = cases * (pdf_bytes + images * image_bytes)
    speeds, cpu = compare(
        bench,
        {**sides("FETCH"), "engine": engine.run},
        lambda label: case_urls(files, f"FETCH-{label}", cases, images, pdf_bytes, image_bytes),
        rounds,
        total,
        warm_up=True,
    )
    bench.procs.stop(engine.child)
    mine, curl, alone = (median(speeds[name]) for name in ("casefetch", "curl", "engine"))
    ratio = mine / curl
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
                "ours_MiB_s": [round(v / 2**20, 1) for v in speeds["casefetch"]],
                "curl_MiB_s": [round(v / 2**20, 1) for v in speeds["curl"]],
                "engine_MiB_s": [round(v / 2**20, 1) for v in speeds["engine"]],
                "bytes": total,
                "cpu_ms_per_case": cpu,
            },
        ),
        # What the downloads alone cost: the gap between this row and the one above is the
        # pipeline around them (Celery, bookkeeping, manifests, page, logs).
        Result(
            "2. fetch, the download engine alone, vs curl",
            alone / 2**20,
            curl / 2**20,
            "MiB/s",
            alone / curl,
            "info",
            True,
            f"casefetch's Fetcher on {parallel} threads: no queue, Redis or manifest",
        ),
    ]
    # The same comparison with few large files: what is left is the cost per byte, not per
    # file (Celery task, bookkeeping, two fsyncs).
    big, _ = compare(
        bench,
        sides("LARGE"),
        lambda label: case_urls(files, f"LARGE-{label}", LARGE_FILES, 0, large_bytes, 0),
        2,
        LARGE_FILES * large_bytes,
    )
    big_mine, big_curl = median(big["casefetch"]), median(big["curl"])
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
