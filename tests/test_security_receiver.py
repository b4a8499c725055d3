"""Hostile requests against the real receiver: a `casefetch receiver` process on a real port.

Requests are written byte for byte on a raw socket, so malformed headers, lying lengths and
slow clients arrive exactly as an attacker would send them. After each one the ingest queue
must still be empty, and the receiver's log must hold no credential.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import select
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from casefetch.constants import INBOX_KEY, INGEST_QUEUE
from casefetch.protocol import make_delivery, safe_headers
from casefetch_tools.redis_server import RedisServer
from receiver import create_app
from receiver.app import MAX_JSON_DEPTH
from tests import receiver_helpers as rh
from tests import samples
from tests.credentials import BASIC_PASSWORD, BASIC_USER, HMAC_KEY, HMAC_SECRET, TOKEN
from tests.pipeline_harness import harness
from tests.processes import ReceiverProcess, receiver_env
from tests.waiting import wait_for

MAX_BODY = 65536
READ_TIMEOUT = 1.0
BODY = samples.body(samples.case("CF-SEC", "https://files.example.com/c.pdf"))
#: Strings that must never show up in a log, a metric or a stored record.
SECRETS = [
    TOKEN,
    HMAC_SECRET,
    BASIC_PASSWORD,
    "almost-" + TOKEN,
    "guessed-password",
    base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode(),
]


def sig(body: bytes, secret: str = HMAC_SECRET) -> bytes:
    return hmac.new(secret.encode(), body, hashlib.sha256).digest()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture(scope="module")
def queue_url(redis_server: RedisServer) -> str:
    return redis_server.db_url(5)


@pytest.fixture(scope="module")
def hostile_receiver(
    queue_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReceiverProcess]:
    env = receiver_env(queue_url)
    env.update(
        {
            "RECEIVER_MAX_BODY_BYTES": str(MAX_BODY),
            "RECEIVER_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT),
        }
    )
    log_path = tmp_path_factory.mktemp("logs") / "hostile-receiver.log"
    process = ReceiverProcess(env, log_path).start()
    yield process
    process.stop()


@pytest.fixture
def queue(queue_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(queue_url)
    client.delete(INGEST_QUEUE, INBOX_KEY)
    yield client
    client.close()


def request(
    headers: list[tuple[str, str]] | list[tuple[bytes, bytes]],
    body: bytes = BODY,
    length: int | None = None,
    content_type: str = "application/json",
) -> bytes:
    lines = [b"POST /webhooks HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    if content_type:
        lines.append(b"Content-Type: " + content_type.encode())
    lines.append(b"Content-Length: %d" % (len(body) if length is None else length))
    for name, value in headers:
        lines.append(
            (name.encode("latin-1") if isinstance(name, str) else name)
            + b": "
            + (value.encode("latin-1") if isinstance(value, str) else value)
        )
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def exchange(port: int, raw: bytes, timeout: float = 10.0) -> bytes:
    """Send ``raw``, return everything the receiver answers before it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")) else 0


AUTH_CASES: list[tuple[str, list[Any]]] = [
    ("no-authorization", []),
    ("empty-authorization", [("Authorization", "")]),
    ("scheme-only", [("Authorization", "Bearer")]),
    ("scheme-and-spaces", [("Authorization", "Bearer    ")]),
    ("unknown-scheme", [("Authorization", f"Token {TOKEN}")]),
    ("digest", [("Authorization", 'Digest username="u", response="x"')]),
    ("tab-separated", [("Authorization", f"Bearer\t{TOKEN}")]),
    ("wrong-token", [("Authorization", f"Bearer almost-{TOKEN}")]),
    ("token-plus-junk", [("Authorization", f"Bearer {TOKEN} {TOKEN}")]),
    ("token-prefix", [("Authorization", f"Bearer {TOKEN[:-1]}")]),
    ("long-token", [("Authorization", "Bearer " + "x" * 4000)]),
    ("latin1-token", [(b"Authorization", b"Bearer caf\xe9")]),
    ("invalid-utf8-token", [(b"Authorization", b"Bearer \xff\xfe\xfd")]),
    ("hmac-unconfigured-key", [("Authorization", f"HMAC-SHA256 other-key:{sig(BODY).hex()}")]),
    ("hmac-wrong-secret", [("Authorization", f"HMAC-SHA256 {HMAC_KEY}:{sig(BODY, 'x').hex()}")]),
    (
        "hmac-x-api-key-disagrees",
        [
            ("Authorization", f"HMAC-SHA256 {HMAC_KEY}:{sig(BODY).hex()}"),
            ("X-Api-Key", "second-key"),
        ],
    ),
    (
        "hmac-empty-x-api-key",
        [("Authorization", f"HMAC-SHA256 {HMAC_KEY}:{sig(BODY).hex()}"), ("X-Api-Key", "")],
    ),
    ("hmac-short-hex", [("Authorization", f"HMAC-SHA256 {HMAC_KEY}:{sig(BODY).hex()[:-2]}")]),
    ("hmac-long-hex", [("Authorization", f"HMAC-SHA256 {HMAC_KEY}:{sig(BODY).hex()}00")]),
    ("hmac-not-hex-nor-base64", [("Authorization", f"HMAC-SHA256 {HMAC_KEY}:{'z*' * 32}")]),
    ("hmac-base64-wrong-size", [("Authorization", f"HMAC-SHA256 {HMAC_KEY}:{b64(b'x' * 31)}")]),
    ("hmac-empty-signature", [("Authorization", f"HMAC-SHA256 {HMAC_KEY}:")]),
    ("hmac-no-colon", [("Authorization", f"HMAC-SHA256 {HMAC_KEY}")]),
    ("hmac-empty-key", [("Authorization", f"HMAC-SHA256 :{sig(BODY).hex()}")]),
    ("hmac-non-ascii-signature", [(b"Authorization", b"HMAC-SHA256 k:\xc3\xa9" * 2)]),
    ("hmac-other-body", [("Authorization", f"HMAC-SHA256 {HMAC_KEY}:{sig(BODY + b' ').hex()}")]),
    ("basic-not-base64", [("Authorization", "Basic !!!not base64!!!")]),
    ("basic-no-padding", [("Authorization", "Basic " + b64(b"platform:p4ss:wor").rstrip("="))]),
    ("basic-no-colon", [("Authorization", "Basic " + b64(b"platformp4ss"))]),
    ("basic-wrong-password", [("Authorization", "Basic " + b64(b"platform:guessed-password"))]),
    ("basic-empty-user", [("Authorization", "Basic " + b64(f":{BASIC_PASSWORD}".encode()))]),
    ("basic-binary", [("Authorization", "Basic " + b64(b"\xff\x00:\xfe"))]),
    ("basic-non-ascii", [(b"Authorization", b"Basic \xc3\xa9t\xc3\xa9")]),
]


@pytest.mark.parametrize("headers", [c[1] for c in AUTH_CASES], ids=[c[0] for c in AUTH_CASES])
def test_malformed_credentials_get_401(
    hostile_receiver: ReceiverProcess, queue: redis.Redis, headers: list[Any]
) -> None:
    answer = exchange(hostile_receiver.port, request(headers))
    assert status_of(answer) == 401, answer[:300]
    assert b"WWW-Authenticate: Bearer" in answer
    assert queue.llen(INGEST_QUEUE) == 0


GOOD = [("Authorization", f"Bearer {TOKEN}")]
HMAC_GOOD = [
    ("Authorization", f"HMAC-SHA256 {HMAC_KEY}:{sig(BODY).hex()}"),
    ("X-Api-Key", HMAC_KEY),
]
AMBIGUOUS_CASES: list[tuple[str, list[tuple[str, str]]]] = [
    ("two-authorization", [*GOOD, ("Authorization", "Bearer other")]),
    ("two-equal-authorization", [*GOOD, *GOOD]),
    ("two-authorization-cased", [*GOOD, ("authorization", "Basic " + b64(b"platform:x"))]),
    ("two-x-api-key", [*HMAC_GOOD, ("X-Api-Key", "other-key")]),
    ("two-equal-x-api-key", [*HMAC_GOOD, ("x-api-key", HMAC_KEY)]),
    ("two-content-type", [*GOOD, ("Content-Type", "text/plain")]),
    ("two-equal-content-type", [*GOOD, ("Content-Type", "application/json")]),
    ("two-content-length", [*GOOD, ("Content-Length", "2")]),
    ("two-equal-content-length", [*GOOD, ("Content-Length", str(len(BODY)))]),
]


@pytest.mark.parametrize(
    "headers", [c[1] for c in AMBIGUOUS_CASES], ids=[c[0] for c in AMBIGUOUS_CASES]
)
def test_ambiguous_requests_get_400(
    hostile_receiver: ReceiverProcess, queue: redis.Redis, headers: list[tuple[str, str]]
) -> None:
    """Two of a header the receiver reads once: which one counts would depend on who reads
    it (a proxy, the receiver, the worker). aiohttp 3.14 refuses two Content-Types or
    Content-Lengths itself; the receiver checks all four whatever aiohttp does."""
    answer = exchange(hostile_receiver.port, request(headers))
    assert status_of(answer) == 400, answer[:300]
    name, said = headers[-1][0].lower().encode(), answer.lower()
    assert (
        b"more than one " + name in said  # the receiver's answer
        or (name.startswith(b"content-") and b"duplicate" in said)
    )  # aiohttp's
    assert queue.llen(INGEST_QUEUE) == 0
    # Each alone is fine.
    assert status_of(exchange(hostile_receiver.port, request(headers[:1]))) == 202


NESTED = b'{"a":' + b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1) + b"}"
BODY_CASES: list[tuple[str, bytes, str, int]] = [
    ("empty", b"", "application/json", 400),
    ("not-json", b"{nope", "application/json", 400),
    ("array", b"[1,2]", "application/json", 400),
    ("string", b'"x"', "application/json", 400),
    ("null", b"null", "application/json", 400),
    ("not-utf8", b'{"a":"\xff"}', "application/json", 400),
    ("huge-integer", b'{"a":' + b"9" * 20_000 + b"}", "application/json", 400),
    ("nested-past-the-limit", NESTED, "application/json", 400),
    ("nested-to-recursion", b"[" * 60_000, "application/json", 400),
    ("nested-objects", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "application/json", 400),
    ("text-plain", BODY, "text/plain", 415),
    ("no-content-type", BODY, "", 415),
    ("json-lookalike-type", BODY, "application/json-patch+json", 415),
    ("over-the-limit", b" " * (MAX_BODY + 1), "application/json", 413),
]


@pytest.mark.parametrize(
    "body,content_type,status", [c[1:] for c in BODY_CASES], ids=[c[0] for c in BODY_CASES]
)
def test_hostile_bodies_are_refused(
    hostile_receiver: ReceiverProcess,
    queue: redis.Redis,
    body: bytes,
    content_type: str,
    status: int,
) -> None:
    answer = exchange(hostile_receiver.port, request(GOOD, body, content_type=content_type))
    assert status_of(answer) == status, answer[:300]
    assert queue.llen(INGEST_QUEUE) == 0


@pytest.mark.parametrize(
    "encoding,status", [("gzip", 415), ("deflate", 415), ("GZIP, identity", 415), ("br", 400)]
)  # aiohttp refuses it itself
def test_compressed_bodies_are_refused(
    hostile_receiver: ReceiverProcess, queue: redis.Redis, encoding: str, status: int
) -> None:
    """A gzip bomb posted to the receiver is never inflated (nor is any compressed body)."""
    bomb = gzip.compress(b"{" + b" " * (64 * MAX_BODY) + b"}")
    headers = [*GOOD, ("Content-Encoding", encoding)]
    answer = exchange(hostile_receiver.port, request(headers, bomb))
    assert status_of(answer) == status, answer[:300]
    assert queue.llen(INGEST_QUEUE) == 0


def test_malformed_chunked_framing_is_a_400(
    hostile_receiver: ReceiverProcess, queue: redis.Redis
) -> None:
    raw = (
        b"POST /webhooks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n"
    )
    assert status_of(exchange(hostile_receiver.port, raw)) == 400
    assert queue.llen(INGEST_QUEUE) == 0


def test_nesting_up_to_the_limit_is_accepted(
    hostile_receiver: ReceiverProcess, queue: redis.Redis
) -> None:
    depth = MAX_JSON_DEPTH - 1
    body = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    assert status_of(exchange(hostile_receiver.port, request(GOOD, body))) == 202
    assert queue.llen(INGEST_QUEUE) == 1


def test_a_lying_content_length_is_refused_unread(
    hostile_receiver: ReceiverProcess, queue: redis.Redis
) -> None:
    answer = exchange(hostile_receiver.port, request(GOOD, b"{}", length=10**12))
    assert status_of(answer) == 413
    assert queue.llen(INGEST_QUEUE) == 0


def test_chunked_body_over_the_limit_is_refused_before_the_end(
    hostile_receiver: ReceiverProcess, queue: redis.Redis
) -> None:
    head = (
        b"POST /webhooks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
    )
    chunk = b"%x\r\n" % 16384 + b" " * 16384 + b"\r\n"
    with socket.create_connection(("127.0.0.1", hostile_receiver.port), timeout=10) as sock:
        sock.sendall(head)
        sent = 0
        # Keep sending until the receiver answers: it must do so soon after the limit.
        while not select.select([sock], [], [], 0)[0]:
            sock.sendall(chunk)
            sent += len(chunk)
            assert sent < 16 * MAX_BODY, "the receiver kept reading far past the limit"
            select.select([sock], [], [], 0.01)
        answer = sock.recv(65536)
    assert status_of(answer) == 413
    assert queue.llen(INGEST_QUEUE) == 0


UNREAD_CASES: list[tuple[str, list[tuple[str, str]]]] = [
    ("hmac-unknown-key", [("Authorization", f"HMAC-SHA256 other-key:{sig(BODY).hex()}")]),
    ("hmac-x-api-key-disagrees", [HMAC_GOOD[0], ("X-Api-Key", "other-key")]),
    ("hmac-malformed-signature", [("Authorization", f"HMAC-SHA256 {HMAC_KEY}:zz")]),
    ("wrong-bearer", [("Authorization", "Bearer almost-" + TOKEN)]),
    ("wrong-basic", [("Authorization", "Basic " + b64(b"platform:guessed-password"))]),
]
CLAIMED = 5 * 1024 * 1024 - 1  # under the default RECEIVER_MAX_BODY_BYTES


def claim_a_large_body(
    port: int, headers: list[tuple[str, str]], wait: float
) -> tuple[float, bytes]:
    """Send headers announcing CLAIMED bytes and only the first few; what comes back within
    ``wait`` seconds, and when."""
    raw = request(headers, BODY, length=CLAIMED)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(raw)
        try:
            answer = sock.recv(65536)
        except TimeoutError:
            answer = b""
    return time.monotonic() - started, answer


@pytest.mark.parametrize("headers", [c[1] for c in UNREAD_CASES], ids=[c[0] for c in UNREAD_CASES])
def test_credentials_are_refused_before_the_body_is_read(
    receiver: ReceiverProcess, headers: list[tuple[str, str]]
) -> None:
    """An unknown apiKey costs no 5 MiB read and no HMAC: the 401 comes while the body has
    barely started (the receiver, waiting for it, would answer 408 after 30 s)."""
    elapsed, answer = claim_a_large_body(receiver.port, headers, wait=10)
    assert status_of(answer) == 401, answer[:300]
    assert elapsed < 5


def test_a_known_key_waits_for_the_body(receiver: ReceiverProcess) -> None:
    """The control: the same request with a configured apiKey is not answered early."""
    elapsed, answer = claim_a_large_body(receiver.port, HMAC_GOOD, wait=1)
    assert answer == b"" and elapsed >= 1


def closed_within(port: int, raw: bytes, drip: bool = False) -> tuple[float, bytes]:
    """Send ``raw`` (all at once, or a byte at a time); time until the receiver gives up."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        pending = raw
        while pending and drip:
            try:
                sock.sendall(pending[:1])
            except OSError:
                break
            pending = pending[1:]
            if select.select([sock], [], [], 0.05)[0]:
                break
        if not drip:
            sock.sendall(raw)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return time.monotonic() - started, answer


def test_slow_headers_are_cut_off(hostile_receiver: ReceiverProcess) -> None:
    partial = b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    elapsed, answer = closed_within(hostile_receiver.port, partial)
    assert elapsed < READ_TIMEOUT + 4 and status_of(answer) in {0, 408}


def test_headers_dripped_a_byte_at_a_time_are_cut_off(hostile_receiver: ReceiverProcess) -> None:
    endless = b"POST /webhooks HTTP/1.1\r\n" + b"X-Drip: " + b"a" * 5000
    elapsed, answer = closed_within(hostile_receiver.port, endless, drip=True)
    assert elapsed < READ_TIMEOUT + 4 and status_of(answer) in {0, 408}


def test_slow_body_gets_408(hostile_receiver: ReceiverProcess, queue: redis.Redis) -> None:
    raw = request(GOOD, BODY)[: -len(BODY) // 2]  # the headers and half the body, then silence
    elapsed, answer = closed_within(hostile_receiver.port, raw)
    assert status_of(answer) == 408, answer[:300]
    assert elapsed < READ_TIMEOUT + 4
    assert queue.llen(INGEST_QUEUE) == 0


def test_the_receiver_still_serves_and_logged_no_credential(
    hostile_receiver: ReceiverProcess, queue: redis.Redis
) -> None:
    answer = exchange(hostile_receiver.port, request(GOOD))
    assert status_of(answer) == 202
    log = hostile_receiver.log_path.read_text(errors="replace")
    assert "refused" in log  # the failures above were logged...
    for secret in SECRETS:
        assert secret not in log  # ...without what they carried
    assert " ERROR casefetch" not in log  # (aiohttp itself logs malformed HTTP at ERROR)


# -- in process: what the receiver logs, counts and enqueues ---------------------------------

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


async def test_no_credential_in_logs_metrics_or_queue(
    aiohttp_client: ClientFactory,
    queue_url: str,
    queue: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    client = await aiohttp_client(create_app(rh.settings(queue_url)))
    attempts = [
        {**rh.bearer(), "Authorization": f"Bearer almost-{TOKEN}"},
        rh.basic(password="guessed-password"),
        rh.hmac_headers(BODY, secret="guessed-password"),
        {**rh.hmac_headers(BODY), "X-Api-Key": "almost-" + TOKEN},
        {**rh.bearer(), "Cookie": f"session={TOKEN}", "Proxy-Authorization": f"Basic {TOKEN}"},
        rh.basic(),
        rh.hmac_headers(BODY),
    ]
    statuses = [(await client.post("/webhooks", data=BODY, headers=h)).status for h in attempts]
    assert statuses == [401, 401, 401, 401, 202, 202, 202]
    metrics = await (await client.get("/metrics")).text()
    queued = [m.decode() for m in queue.lrange(INGEST_QUEUE, 0, -1) if isinstance(m, bytes)]
    assert len(queued) == 3  # bytes all (the client does not decode responses)
    deliveries = [json.loads(kept) for kept in queue.hvals(INBOX_KEY)]
    assert len(deliveries) == 3
    stored = json.dumps([{k: v for k, v in d.items() if k != "body"} for d in deliveries])
    stored += "".join(json.dumps(json.loads(m)) for m in queued)
    for secret in [*SECRETS, HMAC_KEY + ":"]:
        assert secret not in caplog.text
        assert secret not in metrics
        assert secret not in stored
    assert "casefetch_receiver_auth_failures_total" in metrics


def test_quarantine_records_hold_no_credential(tmp_path: Path, redis_server: RedisServer) -> None:
    pipe = harness(tmp_path / "archive", redis_server.url)
    headers = safe_headers(
        [
            ("Authorization", f"Bearer {TOKEN}"),
            ("X-Api-Key", HMAC_KEY),
            ("Cookie", f"s={TOKEN}"),
            ("Content-Type", "application/json"),
        ]
    )
    delivery = make_delivery(b"[1]", headers)
    assert pipe.pipeline.ingest(delivery) == "quarantined"
    record = pipe.quarantine(delivery["deliveryId"])
    assert record is not None and record["reason"] == "not_an_object"
    assert record["headers"] == {"Content-Type": "application/json"}
    assert TOKEN not in json.dumps(record)
    pipe.client.close()


def test_receiver_answers_in_time_while_slow_clients_wait(
    hostile_receiver: ReceiverProcess, queue: redis.Redis
) -> None:
    """Slow clients hold a socket each, not the server: others are served meanwhile."""
    partial = b"POST /webhooks HTTP/1.1\r\nHost: x\r\n"
    stalled = [socket.create_connection(("127.0.0.1", hostile_receiver.port)) for _ in range(50)]
    try:
        for sock in stalled:
            sock.sendall(partial)
        answer = exchange(hostile_receiver.port, request(GOOD), timeout=5)
        assert status_of(answer) == 202
        # ...and every stalled one is dropped once its time is up.
        wait_for(
            lambda: all(select.select([s], [], [], 0)[0] for s in stalled),
            timeout=READ_TIMEOUT + 5,
            message="stalled connections to be closed",
        )
    finally:
        for sock in stalled:
            sock.close()
