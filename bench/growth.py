"""4. Growth: cases of 1, 10, 100 and 1,000 items, time per item.

Every item has an image (2 KiB), every case a 16 KiB PDF; each case is timed alone, from the
webhook to its complete manifest, on the fetch benchmark's workers. A quadratic step anywhere
(validation, planning, bookkeeping, manifest writes) would make the time per item grow with
the number of items. Small cases pay a fixed cost (the webhook, ingest, the PDF, the final
manifest) spread over few items, so their time per item is *higher*: the target compares
1,000 items with 10 (it must not be more than 1.5 times worse) and the table also shows
1,000 against 100, where both are large enough for the fixed cost to vanish.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import payloads, pipeline
from bench.fileserver import url
from bench.harness import Result, median

SIZES = (1, 10, 100, 1000)


def time_case(receiver: str, files: str, archive: Path, cf_ref: str, items: int) -> float:
    body = payloads.body(
        payloads.case(
            cf_ref,
            url(files, f"{cf_ref}/report", "pdf", 16 * 1024),
            [url(files, f"{cf_ref}/p{j}", "jpg", 2048) for j in range(items)],
        )
    )
    started = time.perf_counter()
    pipeline.post(receiver, body)
    settled = pipeline.wait_settled(archive, [cf_ref], timeout=300, interval=0.01)
    elapsed = time.perf_counter() - started
    pipeline.require_complete(settled)
    return elapsed


def run(
    receiver: str, files: str, archive: Path, sizes: tuple[int, ...] = SIZES, rounds: int = 2
) -> list[Result]:
    per_item: dict[int, list[float]] = {n: [] for n in sizes}
    for round_ in range(rounds):
        for n in sizes:
            seconds = time_case(receiver, files, archive, f"GROWTH-{round_}-{n}", n)
            per_item[n].append(seconds / n)
    ms = {n: median(v) * 1000 for n, v in per_item.items()}
    big, mid, small = sizes[-1], sizes[-2], sizes[1]
    notes = ", ".join(f"{n}: {ms[n]:.2f}" for n in sizes) + " ms/item"
    detail = {"ms_per_item": {n: [round(v * 1000, 3) for v in per_item[n]] for n in sizes}}
    return [
        Result(
            f"4. time per item, {big} vs {small} items",
            ms[big],
            ms[small],
            "ms/item",
            ms[big] / ms[small],
            "≤ 1.5x",
            ms[big] / ms[small] <= 1.5,
            notes,
            detail,
        ),
        Result(
            f"4. time per item, {big} vs {mid} items",
            ms[big],
            ms[mid],
            "ms/item",
            ms[big] / ms[mid],
            "≤ 1.5x",
            ms[big] / ms[mid] <= 1.5,
        ),
    ]
