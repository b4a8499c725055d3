"""5. Payload size: a 5 MiB case is accepted and archived, and the receiver's memory does not
grow with the number of requests it serves.

The body is exactly RECEIVER_MAX_BODY_BYTES (5 MiB, the largest accepted), 20 items with
images, the rest non-ASCII text. For memory, a receiver of its own (writing to a Redis
database no worker reads) serves a warm-up, then N requests, then N more, one after the
other; its RSS is sampled all along, and its peak over the second N must stay within 10 % of
its peak over the first N. (RSS between requests depends on when the allocator hands memory
back, and with concurrent requests the peak depends on how they overlap; the peak of one
request at a time is steady, and it is what would grow if requests leaked.)
"""

from __future__ import annotations

import time
from pathlib import Path

import redis

from bench import payloads, pipeline
from bench.fileserver import url
from bench.harness import Bench, BenchError, PeakRss, Result
from casefetch.constants import INGEST_QUEUE
from worker.archive import case_dir

MAX_BODY = 5 * 1024 * 1024


def big_body(files: str, cf_ref: str, size: int = MAX_BODY) -> bytes:
    images: list[str | None] = [url(files, f"{cf_ref}/p{j}", "jpg", 4096) for j in range(20)]
    return payloads.padded_body(
        cf_ref, url(files, f"{cf_ref}/report", "pdf", 16 * 1024), images, size
    )


def run(
    bench: Bench, receiver: str, files: str, archive: Path, requests: int = 20, size: int = MAX_BODY
) -> list[Result]:
    cf_ref = "PAYLOAD-5MIB"
    body = big_body(files, cf_ref, size)
    started = time.perf_counter()
    pipeline.post(receiver, body)
    settled = pipeline.wait_settled(archive, [cf_ref], timeout=120)
    elapsed = time.perf_counter() - started
    pipeline.require_complete(settled)
    stored = (archive / case_dir(cf_ref) / "case.json").read_bytes()
    archived = stored == body

    rss = _receiver_rss(bench, body, requests)
    growth = rss[2] / rss[1]
    return [
        Result(
            f"5. {size / 2**20:g} MiB payload accepted and archived",
            elapsed,
            None,
            "s",
            None,
            "202, complete",
            archived,
            "case.json identical to the body" if archived else "case.json differs!",
        ),
        Result(
            f"5. receiver peak RSS, requests {requests + 1}-{2 * requests} vs 1-{requests}",
            rss[2] / 2**20,
            rss[1] / 2**20,
            "MiB",
            growth,
            "≤ 1.1x",
            growth <= 1.1,
            f"warm-up peak {rss[0] / 2**20:.0f} MiB",
            {"peak_rss_mib": [round(v / 2**20, 1) for v in rss]},
        ),
    ]


def _receiver_rss(bench: Bench, body: bytes, requests: int) -> list[int]:
    """Peak RSS during a warm-up, during N requests, during N more."""
    base, _, _ = bench.redis_url.rpartition("/")
    spare = f"{base}/1"  # no worker consumes this database
    child, receiver = bench.start_receiver("receiver-payload", REDIS_URL=spare)
    client = redis.Redis.from_url(spare)
    samples = []
    try:
        for count in (10, requests, requests):
            with PeakRss(child.pid, interval=0.005) as rss:
                pipeline.post_all(receiver, [body] * count)
            client.delete(INGEST_QUEUE)
            samples.append(rss.peak)
    finally:
        client.close()
        bench.procs.stop(child)
    if not all(samples):
        raise BenchError("the receiver vanished while its memory was measured")
    return samples
