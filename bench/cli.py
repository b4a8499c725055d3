"""``python -m bench``: run the benchmarks, print one table, keep it in docs/benchmarks.md.

Exit status: 0 when every benchmark ran (missed targets are shown in the table), 1 when one
could not run, or with ``--strict`` when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from rich.console import Console

from bench import fetch, growth, memory, payload, receiver, report
from bench.harness import ROOT, Bench, BenchError, Result

ALL = ("receiver", "fetch", "memory", "growth", "payload")


@dataclass(frozen=True)
class Config:
    receiver_rounds: int = 5
    receiver_seconds: float = 5.0
    fetch_rounds: int = 5
    fetch_cases: int = 50
    fetch_images: int = 10
    fetch_pdf: int = fetch.PDF_BYTES
    fetch_image: int = fetch.IMAGE_BYTES
    fetch_large: int = fetch.LARGE_BYTES
    memory_pdf: int = memory.GIB
    growth_sizes: tuple[int, ...] = growth.SIZES
    growth_rounds: int = 2
    payload_requests: int = 20
    payload_bytes: int = payload.MAX_BODY
    #: casefetch's worker processes and the threads of each (fetch, growth, payload): 16
    #: downloads at once, as curl's --parallel-max.
    workers: int = 2
    worker_concurrency: int = 8


QUICK = Config(
    receiver_rounds=1,
    receiver_seconds=1,
    fetch_rounds=1,
    fetch_cases=3,
    fetch_images=2,
    fetch_pdf=64 * 1024,
    fetch_image=16 * 1024,
    fetch_large=256 * 1024,
    memory_pdf=32 * 1024 * 1024,
    growth_sizes=(1, 5, 10, 20),
    growth_rounds=1,
    payload_requests=3,
    payload_bytes=256 * 1024,
)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every ``finally``: children and files go


def run(
    chosen: tuple[str, ...], config: Config, bench: Bench, console: Console
) -> tuple[list[Result], list[str]]:
    results: list[Result] = []
    crashed: list[str] = []

    def attempt(name: str, step: Callable[[], list[Result]]) -> None:
        if name not in chosen:
            return
        console.print(f"[bold]{name}[/bold] …")
        started = time.perf_counter()
        try:
            results.extend(step())
        except Exception as exc:  # one benchmark failing must not hide the others' results
            crashed.append(name)
            console.print(f"[red]{name} could not run: {exc}[/red]")
            if not isinstance(exc, BenchError):  # an expected failure says it in one line
                traceback.print_exc()
            results.append(
                Result(
                    f"{name}: could not run",
                    0.0,
                    None,
                    "",
                    None,
                    "runs",
                    False,
                    str(exc).splitlines()[0][:120],
                )
            )
        console.print(f"  {name} took {time.perf_counter() - started:.0f}s")

    c = config
    bench.start_redis()
    _, files = bench.start_fileserver()
    attempt("receiver", lambda: receiver.run(bench, c.receiver_rounds, c.receiver_seconds))
    _, url = bench.start_receiver()
    archive = bench.path("archive")
    if set(chosen) & {"fetch", "growth", "payload"}:
        workers = [
            bench.start_worker(f"worker-{i}", archive, c.worker_concurrency)
            for i in range(1, c.workers + 1)
        ]
        attempt(
            "fetch",
            lambda: fetch.run(
                bench,
                url,
                files,
                archive,
                c.fetch_rounds,
                c.fetch_cases,
                c.fetch_images,
                c.fetch_pdf,
                c.fetch_image,
                large_bytes=c.fetch_large,
            ),
        )
        attempt("growth", lambda: growth.run(url, files, archive, c.growth_sizes, c.growth_rounds))
        attempt(
            "payload",
            lambda: payload.run(bench, url, files, archive, c.payload_requests, c.payload_bytes),
        )
        for worker in workers:
            bench.procs.stop(worker)
    attempt("memory", lambda: memory.run(bench, url, files, c.memory_pdf))
    return results, crashed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny configuration (seconds)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--only", default=",".join(ALL), help=f"comma-separated: {','.join(ALL)}")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="markdown file (default: docs/benchmarks.md for a full run)",
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        default=None,
        help="parent of the scratch directory (default: the system's temp)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--workers",
        default=None,
        help="casefetch's worker processes x threads each, e.g. 4x4 (default: 2x8)",
    )
    args = parser.parse_args(argv)
    chosen = tuple(n.strip() for n in args.only.split(",") if n.strip())
    unknown = set(chosen) - set(ALL)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    output = args.output
    if output is None and not args.quick and set(chosen) == set(ALL):
        output = ROOT / "docs" / "benchmarks.md"

    config = QUICK if args.quick else Config()
    if args.workers:
        processes, _, threads = args.workers.partition("x")
        if not (processes.isdigit() and threads.isdigit() and int(processes) and int(threads)):
            parser.error(f"--workers takes PROCESSESxTHREADS, e.g. 4x4, not {args.workers!r}")
        config = replace(config, workers=int(processes), worker_concurrency=int(threads))
    console = Console()
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # Whatever was written or deleted before (an earlier run's scratch directory) goes to
    # disk now, not during a measurement. On ext4 without a journal this also shortens how
    # long the inodes of deleted files are skipped by new files from 360 s to 60 s.
    os.sync()
    started = time.perf_counter()
    try:
        with Bench(args.scratch, keep=args.keep) as bench:
            scratch = str(bench.dir.parent)
            results, crashed = run(chosen, config, bench, console)
    except KeyboardInterrupt:
        console.print("[red]interrupted; every process started was stopped[/red]")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    seconds = time.perf_counter() - started
    results.sort(key=lambda r: r.name.split(".", 1)[0])  # by benchmark number, stable
    report.print_table(results, console)
    console.print(f"{len(results)} rows in {seconds:.0f}s")
    if output is not None:
        command = "python -m bench" + (" --quick" if args.quick else "")
        report.write_markdown(output, results, seconds, command, scratch)
        console.print(f"written to {output}")
    if crashed:
        return 1
    if args.strict and not all(r.passed for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
