"""1. Receiver throughput: casefetch against (a) bare aiohttp + RPUSH and (b) aiohttp + Celery.

One server process per variant, the same Redis, the access log off everywhere. wrk (one
thread, a fixed number of connections) POSTs the same signed ~5 KiB case to each in turn;
the order rotates every round and the medians of the rounds are compared, so a burst of load
from elsewhere on the machine hits every variant alike.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

import psutil
import redis

from bench import payloads
from bench.harness import Bench, BenchError, Result, median
from bench.servers import BARE_QUEUE, CELERY_QUEUE
from casefetch.constants import INBOX_INDEX_KEY, INBOX_KEY, INGEST_QUEUE

VARIANTS = ("casefetch", "bare", "celery")
#: Emptied before every round, so each variant starts from the same Redis (no worker drains
#: them here; in production the workers keep both the queue and the inbox short).
QUEUES = (INGEST_QUEUE, BARE_QUEUE, CELERY_QUEUE, INBOX_KEY, INBOX_INDEX_KEY)
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass
class Run:
    rps: float
    p99_ms: float
    requests: int
    errors: int
    #: CPU time the server process spent per request: insensitive to other load on the host.
    cpu_us: float = 0.0


def lua_script(body_path: str, headers: dict[str, str]) -> str:
    lines = [
        'wrk.method = "POST"',
        f'local f = assert(io.open("{body_path}", "rb"))',
        'wrk.body = f:read("*a")',
        "f:close()",
    ]
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    return "\n".join(lines) + "\n"


def parse_wrk(output: str) -> Run:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", output)
    total = re.search(r"(\d+) requests in", output)
    if not (rps and p99 and total):
        raise BenchError(f"cannot read wrk's output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), "
        r"timeout (\d+)",
        output,
    )
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return Run(
        float(rps.group(1)), float(p99.group(1)) * _UNITS[p99.group(2)], int(total.group(1)), errors
    )


def wrk(url: str, script: str, seconds: float, connections: int, pid: int | None = None) -> Run:
    cpu_before = _cpu_seconds(pid)
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        script,
        f"{url}/webhooks",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    result = parse_wrk(done.stdout)
    if pid is not None and result.requests:
        result.cpu_us = (_cpu_seconds(pid) - cpu_before) / result.requests * 1e6
    return result


def _cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def run(bench: Bench, rounds: int = 3, seconds: float = 5.0, connections: int = 32) -> list[Result]:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (apt-get install wrk)")
    body = payloads.realistic_body()
    body_path = bench.dir / "case.json"
    body_path.write_bytes(body)
    script = bench.dir / "post.lua"
    script.write_text(lua_script(str(body_path), payloads.hmac_headers(body)))
    py = bench.python
    servers = {
        "casefetch": bench.start_receiver("receiver-casefetch"),
        "bare": bench.start_receiver("receiver-bare", [py, "-m", "bench.servers", "bare"]),
        "celery": bench.start_receiver("receiver-celery", [py, "-m", "bench.servers", "celery"]),
    }
    urls = {name: url for name, (_, url) in servers.items()}
    pids = {name: child.pid for name, (child, _) in servers.items()}
    client = redis.Redis.from_url(bench.redis_url)
    runs: dict[str, list[Run]] = {v: [] for v in VARIANTS}
    try:
        for variant in VARIANTS:  # warm up: connections, caches, the JIT-less interpreter
            wrk(urls[variant], str(script), 1, connections)
        for round_ in range(rounds):
            order = VARIANTS[round_ % 3 :] + VARIANTS[: round_ % 3]
            for variant in order:
                client.delete(*QUEUES)
                runs[variant].append(
                    wrk(urls[variant], str(script), seconds, connections, pids[variant])
                )
        # wrk's last requests may still be in a server when it exits: stop the servers
        # first, so none is queued after the clean-up for the next benchmark's workers.
        for child, _ in servers.values():
            bench.procs.stop(child)
        client.delete(*QUEUES)
    finally:
        client.close()
    return results(runs, len(body), connections)


def results(runs: dict[str, list[Run]], size: int, connections: int) -> list[Result]:
    rps = {v: median([r.rps for r in runs[v]]) for v in VARIANTS}
    p99 = {v: median([r.p99_ms for r in runs[v]]) for v in VARIANTS}
    cpu = {v: median([r.cpu_us for r in runs[v]]) for v in VARIANTS}
    errors = {v: sum(r.errors for r in runs[v]) for v in VARIANTS}
    detail = {
        "payload_bytes": size,
        "connections": connections,
        "rounds": len(runs["bare"]),
        "rps": {v: [round(r.rps) for r in runs[v]] for v in VARIANTS},
        "p99_ms": {v: [round(r.p99_ms, 2) for r in runs[v]] for v in VARIANTS},
        "errors": errors,
        "cpu_us_per_request": {v: round(cpu[v], 1) for v in VARIANTS},
    }
    clean = errors["casefetch"] == 0
    rps_ratio = rps["casefetch"] / rps["bare"]
    p99_ratio = p99["casefetch"] / p99["bare"]
    return [
        Result(
            "1. receiver req/s vs (a) bare aiohttp+RPUSH",
            rps["casefetch"],
            rps["bare"],
            "req/s",
            rps_ratio,
            "≥ 0.8x",
            clean and rps_ratio >= 0.8,
            f"non-2xx/socket errors: {errors['casefetch']}",
            detail,
        ),
        Result(
            "1. receiver p99 vs (a)",
            p99["casefetch"],
            p99["bare"],
            "ms",
            p99_ratio,
            "≤ 1.5x",
            clean and p99_ratio <= 1.5,
        ),
        Result(
            "1. receiver req/s vs (b) aiohttp+Celery",
            rps["casefetch"],
            rps["celery"],
            "req/s",
            rps["casefetch"] / rps["celery"],
            "info",
            True,
            f"(b) p99 {p99['celery']:.1f} ms",
        ),
    ]
