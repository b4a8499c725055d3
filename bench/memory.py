"""3. Memory: one case whose PDF is 1 GiB, archived by one worker process.

The file server streams the PDF (it never holds it); the worker process tree's RSS is sampled
every 20 ms from before the webhook until the manifest is complete. Afterwards the archive's
temporary folder must be empty.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import payloads, pipeline
from bench.fileserver import url
from bench.harness import Bench, PeakRss, Result, tree_rss
from worker.archive import case_dir
from worker.storage import TMP_DIR

GIB = 1024**3
TARGET_MIB = 150


def run(bench: Bench, receiver: str, files: str, pdf_bytes: int = GIB) -> list[Result]:
    archive = bench.path("archive-memory")
    worker = bench.start_worker("worker-memory", archive)
    cf_ref = "MEMORY-1"
    body = payloads.body(
        payloads.case(
            cf_ref,
            url(files, "huge/report", "pdf", pdf_bytes),
            [url(files, f"huge/photo-{j}", "jpg", 300 * 1024) for j in range(3)],
        )
    )
    baseline = tree_rss(worker.pid)
    started = time.perf_counter()
    with PeakRss(worker.pid) as rss:
        pipeline.post(receiver, body)
        settled = pipeline.wait_settled(archive, [cf_ref], timeout=240, interval=0.1)
    elapsed = time.perf_counter() - started
    size = pipeline.require_complete(settled)
    bench.procs.stop(worker)
    leftovers = _leftovers(archive / TMP_DIR)
    pdf = archive / case_dir(cf_ref) / "case.pdf"
    stored = pdf.stat().st_size
    pdf.unlink()  # a GiB of scratch space back at once
    peak_mib = rss.peak / 2**20
    return [
        Result(
            f"3. worker peak RSS, {_size(pdf_bytes)} PDF",
            peak_mib,
            None,
            "MiB",
            None,
            f"≤ {TARGET_MIB} MiB",
            peak_mib <= TARGET_MIB and stored == pdf_bytes,
            f"idle {baseline / 2**20:.0f} MiB; {size / 2**20:.0f} MiB in {elapsed:.1f}s",
            {"samples": rss.samples, "pdf_bytes": stored},
        ),
        Result(
            "3. temporary files left",
            float(len(leftovers)),
            None,
            "files",
            None,
            "0",
            not leftovers,
            ", ".join(leftovers[:3]),
        ),
    ]


def _leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


def _size(n: int) -> str:
    return f"{n / GIB:g} GiB" if n >= GIB else f"{n / 2**20:g} MiB"
