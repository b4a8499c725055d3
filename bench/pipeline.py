"""Driving the real pipeline: post cases to a casefetch receiver, wait for their manifests."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import urllib3

from bench import payloads
from bench.harness import BenchError
from worker.archive import case_dir

_POOL = urllib3.PoolManager(maxsize=8, retries=False, timeout=60)


def post(receiver_url: str, body: bytes) -> str:
    """POST a signed case; return its deliveryId (a 202 is required)."""
    response = _POOL.request(
        "POST", f"{receiver_url}/webhooks", body=body, headers=payloads.hmac_headers(body)
    )
    if response.status != 202:
        raise BenchError(f"receiver answered {response.status}: {response.data[:200]!r}")
    return str(json.loads(response.data)["deliveryId"])


def post_all(receiver_url: str, bodies: list[bytes], parallel: int = 1) -> list[str]:
    if parallel <= 1:
        return [post(receiver_url, body) for body in bodies]
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda body: post(receiver_url, body), bodies))


def manifest(archive: Path, cf_ref: str) -> dict[str, Any] | None:
    path = archive / case_dir(cf_ref) / "manifest.json"
    try:
        return json.loads(path.read_bytes())  # type: ignore[no-any-return]
    except (FileNotFoundError, ValueError):
        return None  # not written yet (it appears atomically, but may be replaced meanwhile)


def wait_settled(
    archive: Path, cf_refs: list[str], timeout: float, interval: float = 0.02
) -> dict[str, dict[str, Any]]:
    """Every case's manifest once it is no longer pending; BenchError after ``timeout``.

    This process shares the CPUs with the pipeline it times: a manifest is read and parsed
    only when its file changed (a new inode, size or mtime: manifests are replaced by a
    rename), not every case on every poll.
    """
    deadline = time.monotonic() + timeout
    paths = {cf_ref: archive / case_dir(cf_ref) / "manifest.json" for cf_ref in cf_refs}
    seen: dict[str, tuple[int, int, int]] = {}
    settled: dict[str, dict[str, Any]] = {}
    while True:
        for cf_ref, path in list(paths.items()):
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                continue
            signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if seen.get(cf_ref) == signature:
                continue
            found = manifest(archive, cf_ref)
            if found is None:
                continue  # replaced meanwhile: read again on the next poll
            seen[cf_ref] = signature
            if found.get("status") != "pending":
                settled[cf_ref] = found
                del paths[cf_ref]
        if not paths:
            return settled
        if time.monotonic() > deadline:
            raise BenchError(
                f"{len(paths)} case(s) not settled after {timeout:.0f}s, e.g. {sorted(paths)[:3]}"
            )
        time.sleep(interval)


def require_complete(settled: dict[str, dict[str, Any]]) -> int:
    """Total bytes stored; BenchError when a case is not complete."""
    total = 0
    for cf_ref, found in settled.items():
        if found["status"] != "complete":
            errors = [f.get("error") for f in found["files"] if f.get("error")]
            raise BenchError(f"case {cf_ref} is {found['status']}: {errors[:3]}")
        total += sum(int(f["bytes"]) for f in found["files"])
    return total
