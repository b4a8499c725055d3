"""The benchmark harness (bench/) stays runnable: its parts, and a tiny run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import cli, fileserver, payloads, pipeline, receiver, report
from bench.harness import BenchError, Result
from tests.samples import ends_whole
from worker.archive import case_dir
from worker.sniff import PDF, sniff

WRK_OUTPUT = """\
Running 5s test @ http://127.0.0.1:8080/webhooks
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.21ms  512.00us  20.00ms   90.00%
    Req/Sec    10.00k   500.00    11.00k    70.00%
  Latency Distribution
     50%    3.00ms
     75%    3.50ms
     90%    4.00ms
     99%  812.00us
  50000 requests in 5.00s, 9.83MB read
  Non-2xx or 3xx responses: 12
Requests/sec:  10000.50
Transfer/sec:      1.97MB
"""


def _manifest(archive: Path, cf_ref: str, status: str) -> None:
    path = archive / case_dir(cf_ref) / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name("manifest.json.new")
    staged.write_text(json.dumps({"cfRef": cf_ref, "status": status, "files": []}))
    staged.replace(path)  # as the worker writes it: a new file renamed over the old


def test_wait_settled_reads_a_replaced_manifest_again(tmp_path: Path) -> None:
    _manifest(tmp_path, "CF-1", "pending")
    _manifest(tmp_path, "CF-2", "complete")
    with pytest.raises(BenchError, match="1 case"):
        pipeline.wait_settled(tmp_path, ["CF-1", "CF-2"], timeout=0.05, interval=0.01)
    _manifest(tmp_path, "CF-1", "complete")
    settled = pipeline.wait_settled(tmp_path, ["CF-1", "CF-2"], timeout=5, interval=0.01)
    assert {cf: m["status"] for cf, m in settled.items()} == {
        "CF-1": "complete",
        "CF-2": "complete",
    }


def test_wrk_output_is_read() -> None:
    run = receiver.parse_wrk(WRK_OUTPUT)
    assert run.rps == 10000.50
    assert run.p99_ms == 0.812
    assert run.requests == 50000
    assert run.errors == 12


def test_wrk_script_posts_the_body_with_its_headers(tmp_path: Path) -> None:
    script = receiver.lua_script("/tmp/body.json", {"X-Api-Key": "k"})
    assert 'wrk.method = "POST"' in script and 'wrk.headers["X-Api-Key"] = "k"' in script


def test_realistic_case_is_about_5_kib_with_20_non_ascii_items() -> None:
    body = payloads.realistic_body()
    payload = json.loads(body)
    assert 4 * 1024 <= len(body) <= 6 * 1024
    assert len(payload["items"]) == 20
    assert not body.isascii()


def test_padded_body_has_the_exact_size() -> None:
    body = payloads.padded_body("CF-1", "https://h/c.pdf", ["https://h/1.jpg", None], 100_000)
    assert len(body) == 100_000
    assert json.loads(body)["cfRef"] == "CF-1"


def test_generated_files_are_valid_whole_or_streamed() -> None:
    small = fileserver.whole("pdf", 5000)
    assert len(small) == 5000 and sniff(small) is PDF and ends_whole(PDF, small)
    streamed = b"".join(bytes(part) for part in fileserver.stream("pdf", 3 * 2**20 + 7))
    assert len(streamed) == 3 * 2**20 + 7 and ends_whole(PDF, streamed)
    for kind in ("jpg", "png"):
        data = fileserver.whole(kind, 4096)
        assert len(data) == 4096 and sniff(data) is not None


def test_markdown_table_has_one_row_per_result() -> None:
    results = [
        Result("a", 1.0, 2.0, "req/s", 0.5, "≥ 0.8x", False),
        Result("b", 3.0, None, "MiB", None, "≤ 150 MiB", True),
    ]
    table = report.markdown_table(results).splitlines()
    assert len(table) == 4
    assert "FAIL" in table[2] and "pass" in table[3]


def test_a_run_rewrites_the_table_and_keeps_the_written_sections(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text(
        "# Benchmarks\n\nold table\n\n## How it is measured\n\nBy hand.\n\n"
        "## Why\n\nKept.\n\n## Machine\n\n- old\n"
    )
    results = [Result("a", 1.0, 2.0, "req/s", 0.5, "≥ 0.8x", True)]
    report.write_markdown(page, results, 1.0, "python -m bench", str(tmp_path))
    text = page.read_text()
    assert "old table" not in text and "- old" not in text and "| a |" in text
    assert "## How it is measured\n\nBy hand.\n\n## Why\n\nKept.\n\n## Machine" in text


def test_quick_run_end_to_end(tmp_path: Path) -> None:
    output = tmp_path / "bench.md"
    code = cli.main(
        [
            "--quick",
            "--only",
            "growth,payload,memory",
            "--output",
            str(output),
            "--scratch",
            str(tmp_path),
        ]
    )
    assert code == 0
    text = output.read_text()
    assert "time per item" in text and "peak RSS" in text and "payload" in text
    assert "could not run" not in text
    assert not list(tmp_path.glob("casefetch-bench-*"))  # the scratch directory is gone


def test_quick_fetch_tells_where_each_side_spent_its_cpu(tmp_path: Path) -> None:
    output = tmp_path / "bench.md"
    code = cli.main(
        ["--quick", "--only", "fetch", "--output", str(output), "--scratch", str(tmp_path)]
    )
    assert code == 0
    text = output.read_text()
    assert "could not run" not in text
    details = json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])
    spent = details["2. fetch throughput vs curl (+fsync)"]["cpu_ms_per_case"]
    ours, curl, engine = spent["casefetch"], spent["curl"], spent["engine"]
    # Each side's rounds are charged to what ran in them: casefetch's workers in its own,
    # curl (a child of the bench) in curl's, the download engine alone in its. (Processes'
    # CPU times count in ticks of 10 ms: three cases leave the receiver's and the file
    # host's under one tick.)
    services = {"workers", "receiver", "redis", "fileserver", "engine", "bench+curl"}
    assert set(ours) == set(curl) == set(engine) == services
    assert ours["workers"] > max(curl["workers"], engine["workers"])
    assert engine["engine"] > max(ours["engine"], curl["engine"])
    assert curl["bench+curl"] > 0
    assert "the download engine alone" in text
