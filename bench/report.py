"""The results table: printed with rich, and kept as markdown in docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.harness import Result

HEADERS = ("benchmark", "ours", "comparison", "ratio", "target", "result", "notes")

METHOD = """\
## How it is measured

Everything runs on this machine, over 127.0.0.1, in separate processes: one redis-server
(AOF on, `appendfsync everysec`, the same for every variant), the file server, the receivers,
the workers and the load generators. `python -m bench --quick` runs a tiny configuration in
seconds (the smoke test does); `--strict` exits 1 when a target is missed; `--only` picks
benchmarks.

1. **Receiver throughput.** wrk (1 thread, 32 connections) POSTs one HMAC-signed case of
   5.4 KiB (20 items, 10 with image URLs, accented and non-Latin text) to three servers, each
   a single process with the access log off, all writing to the same Redis:
   casefetch (`casefetch receiver`), (a) aiohttp reading the body and doing one redis.asyncio
   `RPUSH` (`bench/servers.py bare`) and (b) aiohttp verifying the HMAC, parsing the JSON and
   calling Celery's `send_task` in a thread pool (`bench/servers.py celery`). After a 1 s
   warm-up each, rounds of 5 s run the three in turn, the order rotating every round;
   the table gives the medians of the rounds. Every answer must be a 2xx. The details also
   give the server's CPU time per request, which other load on the machine disturbs less
   than requests per second.
2. **Fetch throughput.** 50 cases, each one 2 MiB PDF and ten 300 KiB JPEGs (251 MiB), served
   from memory by `bench/fileserver.py` (a threaded HTTP/1.1 server). casefetch: the 50
   webhooks go to the receiver, two `casefetch worker` processes (8 threads each) fetch;
   timed from the first webhook sent to the last manifest `complete`. curl: the same URLs
   with `curl --parallel --parallel-max 16` (2 x 8), then every file and the folder fsynced,
   since casefetch fsyncs a file and its folder before it calls it stored. Rounds alternate
   which goes first; medians.
3. **Memory.** One case whose PDF is 1 GiB (streamed by the file server, never held) plus
   three images, one worker process; its process tree's RSS sampled every 20 ms from before
   the webhook to the complete manifest. Then `ARCHIVE_DIR/.tmp` must be empty.
4. **Growth.** Cases of 1, 10, 100 and 1,000 items (each with a 2 KiB image, plus a 16 KiB
   PDF), each timed alone from webhook to complete manifest on the two workers; two rounds,
   medians. A case of 10 items pays the fixed cost of a case (webhook, ingest, PDF, final
   manifest) over 10 items, one of 1,000 over 1,000: flat or falling time per item means
   no step grows faster than the number of items. Target: 1,000 items at most 1.5 times
   10 items' time per item; the second row compares 1,000 with 100 items.
5. **Payload size.** A case of exactly 5 MiB (RECEIVER_MAX_BODY_BYTES) with 20 images is
   sent, must be answered 202 and archived with `case.json` byte for byte the body. Then a
   receiver of its own serves 4 warm-up requests of that body, N = 20 more, then 20 more
   (four at a time), its RSS sampled every 5 ms; the peak over the second 20 must be within
   10 % of the peak over the first 20 (RSS between bursts only says when the allocator
   returned memory; the peak under the same load is what grows if requests leak).
"""


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cells(result: Result) -> tuple[str, ...]:
    unit = f" {result.unit}" if result.unit else ""
    comparison = f"{fmt(result.comparison)}{unit}" if result.comparison is not None else "—"
    ratio = f"{result.ratio:.2f}x" if result.ratio is not None else "—"
    return (result.name, f"{fmt(result.ours)}{unit}", comparison, ratio, result.target,
            "pass" if result.passed else "FAIL", result.notes)


def print_table(results: list[Result], console: Console | None = None) -> None:
    table = Table(title="casefetch benchmarks")
    for header in HEADERS:
        table.add_column(header, overflow="fold")
    for result in results:
        row = cells(result)
        style = None if result.passed else "red"
        table.add_row(*row, style=style)
    console = console or Console()
    # A pipe or CI log gets 80 columns by default: too narrow for this table.
    console.width = max(console.width, 150)
    console.print(table)


def markdown_table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for result in results:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(result)) + " |")
    return "\n".join(lines)


def machine() -> dict[str, str]:
    info = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": _cpu_model(), "cores": str(os.cpu_count()),
            "load average at the end": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "python": platform.python_version(), "kernel": platform.release()}
    for package in ("aiohttp", "redis", "celery", "kombu", "urllib3", "orjson"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    for name, argv in (("redis-server", ["redis-server", "--version"]),
                       ("wrk", ["wrk", "--version"]), ("curl", ["curl", "--version"])):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
            info[name] = (done.stdout or done.stderr).splitlines()[0][:80]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            info[name] = "not found"
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_markdown(path: Path, results: list[Result], seconds: float, command: str,
                   scratch: str) -> None:
    info = machine()
    details = {r.name: r.details for r in results if r.details}
    text = "\n".join([
        "# Benchmarks",
        "",
        f"The last full run of `{command}`: {seconds:.0f} s, {info['date']}. Ratios matter more",
        "than absolute numbers: the machine is shared and its load varies from run to run.",
        "",
        markdown_table(results),
        "",
        METHOD,
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in info.items()],
        f"- scratch directory (archives, curl's files, Redis): {scratch}",
        "",
        "## Details of the run",
        "",
        "```json",
        json.dumps(details, indent=2, ensure_ascii=False),
        "```",
        "",
    ])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
