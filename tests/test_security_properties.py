"""Property-based tests (hypothesis): whatever arrives, nothing breaks.

- authentication: any header, key and body give a scheme or an AuthError, nothing else;
- the receiver: any bytes, headers and content type give a 2xx or a 4xx, never a 5xx, and
  only a 202 enqueues anything;
- the worker: any body, and any JSON in any field of a case, ends archived (a settled
  manifest) or quarantined (a record with a known reason), without an exception.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from casefetch_tools.redis_server import RedisServer
from receiver.auth import AuthError, Credentials, Scheme, authenticate
from tests import samples
from tests.credentials import BASIC_PASSWORD, BASIC_USER, HMAC_KEY, HMAC_SECRET, TOKEN
from tests.inprocess_receiver import InProcessReceiver
from tests.pipeline_harness import Harness, harness
from tests.recording_server import RecordingServer, Reply

#: Reproducible in CI (same examples every run), exploratory on a developer's machine. No
#: shrinking: a failing example is printed as found (shrinking through the pipeline is slow).
PROPERTIES = settings(
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

CREDS = Credentials.build(
    bearer_tokens=(TOKEN,), hmac_keys=((HMAC_KEY, HMAC_SECRET),), basic_users=(("u", "p"),)
)
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=120
)
scheme_names = st.sampled_from(
    ["Bearer", "bearer", "BASIC", "Basic", "HMAC-SHA256", "hmac-sha256", "Digest", "", "Bearer\t"]
)


@PROPERTIES
@given(
    scheme=scheme_names,
    value=st.text(max_size=200) | header_text,
    api_key=st.none() | st.text(max_size=40),
    body=st.binary(max_size=200),
)
def test_authenticate_refuses_with_auth_error_only(
    scheme: str, value: str, api_key: str | None, body: bytes
) -> None:
    try:
        result = authenticate(f"{scheme} {value}", api_key, body, CREDS)
    except AuthError:
        return
    assert isinstance(result, Scheme)


def valid_auth(body: bytes, kind: str) -> dict[str, str]:
    if kind == "bearer":
        return {"Authorization": f"Bearer {TOKEN}"}
    if kind == "basic":
        token = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    signature = hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"Authorization": f"HMAC-SHA256 {HMAC_KEY}:{signature}", "X-Api-Key": HMAC_KEY}


@pytest.fixture(scope="module")
def receiver_in_process(redis_server: RedisServer) -> Iterator[InProcessReceiver]:
    running = InProcessReceiver(redis_server.url, 8, max_body_bytes=4096)
    yield running
    running.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(PROPERTIES, max_examples=300)
@given(
    body=st.binary(max_size=5000) | json_values.map(lambda v: json.dumps(v).encode()),
    auth=st.sampled_from(["bearer", "basic", "hmac", "junk", "none"]),
    junk=header_text,
    content_type=st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "text/plain", "", "*/*"]
    ),
)
def test_receiver_never_answers_5xx(
    receiver_in_process: InProcessReceiver, body: bytes, auth: str, junk: str, content_type: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    if auth == "junk":
        headers["Authorization"] = junk
    elif auth != "none":
        headers.update(valid_auth(body, auth))
    before = receiver_in_process.queued()
    status = receiver_in_process.post(body, headers)
    assert status in {202, 400, 401, 413, 415}
    assert receiver_in_process.queued() == before + (status == 202)


# -- the worker ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files() -> Iterator[RecordingServer]:
    running = RecordingServer().start()
    running.add("p/case.pdf", Reply(body=samples.pdf()))
    running.add("p/photo", Reply(body=samples.png()))
    running.add("p/slow-500", Reply(status=500))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Harness]:
    # A database kept across the module's tests, like the archive (tests/databases.py).
    built = harness(tmp_path_factory.mktemp("prop") / "archive", redis_server.url, db=14)
    yield built
    # Its file threads, its fetcher's connections and its Redis client.
    built.runtime.close()


REASONS = {"not_json", "not_an_object", "invalid_case"}


def check_ending(pipe: Harness, body: bytes) -> None:
    ended = pipe.deliver(body)
    if ended["outcome"] == "quarantined":
        record = pipe.quarantine(ended["deliveryId"])
        assert record is not None and record["reason"] in REASONS, record
        return
    assert ended["outcome"] in {"planned", "duplicate", "resumed"}
    payload = json.loads(body)
    [manifest] = [m for m in pipe.manifests() if m["cfRef"] == payload["cfRef"]]
    # The manifest describes these very bytes, as this delivery's own or (an identical
    # re-delivery) as an earlier delivery's that names this one the latest it has seen.
    assert manifest["payloadSha256"] == samples.sha(body), manifest
    described = {manifest["deliveryId"], manifest.get("latestDeliveryId")}
    assert ended["deliveryId"] in described, manifest
    assert manifest["status"] in {"complete", "incomplete"}, manifest


@PROPERTIES
@given(body=st.binary(max_size=300))
def test_any_bytes_end_quarantined(pipe: Harness, body: bytes) -> None:
    check_ending(pipe, body)


def urls(server: RecordingServer) -> st.SearchStrategy[Any]:
    return (
        st.sampled_from(
            [
                server.url("p/case.pdf"),
                server.url("p/photo"),
                server.url("p/slow-500"),
                server.url("p/missing"),
                "ftp://127.0.0.1/x",
                "http://files.example.com/x.pdf",
                "file:///etc/passwd",
                "http://169.254.169.254/",
                "",
                "not a url",
            ]
        )
        | json_values
    )


@PROPERTIES
@given(data=st.data())
def test_any_json_in_any_field_ends_archived_or_quarantined(
    pipe: Harness, files: RecordingServer, data: st.DataObject
) -> None:
    url = urls(files)
    item = st.fixed_dictionaries(
        {},
        optional={
            "cfRef": st.text(max_size=20) | json_values,
            "createdAt": st.just("2026-11-28T10:00:00.000Z") | json_values,
            "stepAction": st.sampled_from(["PHOTOGRAPHY", "SIGNATURE", "TEXT_FIELD", "x"])
            | json_values,
            "imageUrl": url,
            "geolocLatitude": json_values,
            "data": json_values,
            "extra": json_values,
        },
    )
    case = data.draw(
        st.fixed_dictionaries(
            {
                "cfRef": st.text(min_size=1, max_size=40) | json_values,
                "reportId": st.just("R-1") | json_values,
                "caseUrl": st.just(files.url("p/case.pdf")) | url,
                "createdAt": st.just("2026-11-28T10:00:00.000Z") | json_values,
                "items": st.lists(item | json_values, max_size=4) | json_values,
            },
            optional={"closed": json_values, "frame": json_values, "unknown": json_values},
        )
    )
    check_ending(pipe, json.dumps(case).encode())


def test_too_many_items_are_quarantined_cleanly(pipe: Harness, tmp_path: Path) -> None:
    case = samples.case(
        "CF-MANY", "https://files.example.com/c.pdf", [{"cfRef": str(i)} for i in range(10_001)]
    )
    ended = pipe.deliver(samples.body(case))
    record = pipe.quarantine(ended["deliveryId"])
    assert record is not None and record["reason"] == "invalid_case"
    assert "items" in record["errors"]


def test_changed_redelivery_with_nothing_new_to_fetch_settles(
    pipe: Harness, files: RecordingServer
) -> None:
    """Found by the property above: the ingest waited on its own case lock, then gave up."""
    case = samples.case("CF-RESEND", files.url("p/case.pdf"))
    first = pipe.deliver(samples.body(case))
    second = pipe.deliver(samples.body({**case, "frame": "changed"}))
    assert first["outcome"] == second["outcome"] == "planned"
    [manifest] = [m for m in pipe.manifests() if m["cfRef"] == "CF-RESEND"]
    assert manifest["status"] == "complete" and manifest["deliveryId"] == second["deliveryId"]
