"""The results table: printed with rich, and kept as markdown in docs/benchmarks.md, around
the page's hand-written sections."""

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

#: The page's hand-written sections (how it is measured, what was found and why the code is as
#: it is) run from the first of these headings to the second; a run rewrites only the table
#: above them and the machine and details below.
PROSE_FROM = "## How it is measured"
PROSE_UNTIL = "## Machine"


def kept_prose(path: Path) -> str:
    """The hand-written sections of the page at ``path`` ("" when it has none)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ""
    start, end = text.find(PROSE_FROM), text.find(PROSE_UNTIL)
    return text[start:end].rstrip("\n") + "\n" if 0 <= start < end else ""


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
    ours = f"{result.ours:.0f}" if result.unit == "files" else fmt(result.ours)
    comparison = f"{fmt(result.comparison)}{unit}" if result.comparison is not None else "—"
    ratio = f"{result.ratio:.2f}x" if result.ratio is not None else "—"
    return (
        result.name,
        f"{ours}{unit}",
        comparison,
        ratio,
        result.target,
        "pass" if result.passed else "FAIL",
        result.notes,
    )


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
    info = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "load average at the end": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    for package in ("aiohttp", "redis", "celery", "kombu", "urllib3", "orjson", "msgspec"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    for name, argv in (
        ("redis-server", ["redis-server", "--version"]),
        ("wrk", ["wrk", "--version"]),
        ("curl", ["curl", "--version"]),
    ):
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


def write_markdown(
    path: Path, results: list[Result], seconds: float, command: str, scratch: str
) -> None:
    info = machine()
    details = {r.name: r.details for r in results if r.details}
    text = "\n".join(
        [
            "# Benchmarks",
            "",
            f"The last full run of `{command}`: {seconds:.0f} s, {info['date']}. "
            "Ratios matter more",
            "than absolute numbers: the machine is shared and its load varies from run to run.",
            "",
            markdown_table(results),
            "",
            kept_prose(path),
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
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
