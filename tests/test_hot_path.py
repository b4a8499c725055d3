"""The receiver's hot path (issue 6): the fast encoders give what the slow ones gave."""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Any

import pytest

from casefetch import protocol


def decode(message: bytes) -> list[Any]:
    """A Celery task message's [args, kwargs, embed]."""
    envelope = json.loads(message)
    decoded: list[Any] = json.loads(base64.b64decode(envelope["body"]))
    return decoded


def test_ids_are_uuids_of_the_right_version() -> None:
    delivery_id = protocol.new_delivery_id()
    assert uuid.UUID(delivery_id).version == 7 and str(uuid.UUID(delivery_id)) == delivery_id
    tag = protocol._random_uuid()
    assert uuid.UUID(tag).version == 4 and str(uuid.UUID(tag)) == tag
    assert protocol.new_delivery_id(ms=1) < protocol.new_delivery_id(ms=2)


def test_received_at_is_iso_with_milliseconds() -> None:
    assert protocol.utc_iso(1_764_324_000_123) == "2025-11-28T10:00:00.123Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", protocol.utc_now_iso())


def test_message_carries_the_body_exactly() -> None:
    body = '{"cfRef":"CF-ü","t":"😀 \u2028 \\"q\\""}'.encode()
    delivery = protocol.make_delivery(body, {"Content-Type": "application/json"})
    [args, kwargs, _embed] = decode(protocol.task_message("t", "q", [delivery], "id-1"))
    assert args == [delivery] and kwargs == {}
    assert protocol.delivery_body(args[0]) == body


def test_undecodable_header_bytes_do_not_break_the_message() -> None:
    # aiohttp hands undecodable header bytes over as lone surrogates; orjson refuses them.
    delivery = protocol.make_delivery(b"{}", {"X-Odd": "caf\udce9"})
    [args, _kwargs, _embed] = decode(protocol.task_message("t", "q", [delivery], "id-2"))
    assert args[0]["headers"] == {"X-Odd": "caf\udce9"}


def test_header_names_become_plain_strings() -> None:
    from multidict import istr

    kept = protocol.safe_headers(
        [(istr("Content-Type"), "application/json"), (istr("Authorization"), "Bearer x")]
    )
    assert kept == {"Content-Type": "application/json"}
    assert all(type(name) is str for name in kept)


def test_message_pieced_together_is_the_envelope_serialised() -> None:
    delivery = protocol.make_delivery(b'{"cfRef":"CF-1"}', {"X-Odd": "caf\udce9"})
    message = protocol.task_message("casefetch.ingest", "casefetch.ingest", [delivery], "id-3")
    envelope = json.loads(message)
    body = base64.b64encode(
        json.dumps([[delivery], {}, protocol._EMBED], separators=(",", ":")).encode()
    ).decode()
    expected = protocol._envelope(
        "casefetch.ingest",
        "casefetch.ingest",
        "id-3",
        body,
        envelope["properties"]["delivery_tag"],
        protocol._ORIGIN,
    )
    assert envelope == expected
    assert uuid.UUID(envelope["properties"]["delivery_tag"]).version == 4
    args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    assert args == [delivery]


def test_received_at_changes_with_the_second() -> None:
    assert protocol.utc_iso(1_764_324_000_999) == "2025-11-28T10:00:00.999Z"
    assert protocol.utc_iso(1_764_324_001_000) == "2025-11-28T10:00:01.000Z"


def _json_accepts(body: bytes) -> bool:
    """The worker's verdict: json.loads gives an object nested at most MAX_JSON_DEPTH deep."""
    from receiver.app import MAX_JSON_DEPTH, _deeper_than

    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(parsed, dict) and not _deeper_than(parsed, MAX_JSON_DEPTH)


def _utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


EDGES = [
    b'{"cfRef":"x","a":"\xff"}',
    b'{"a":["\xc3"]}',
    b'\xef\xbb\xbf{"cfRef":"x"}',
    '{"cfRef":"é"}'.encode("utf-16"),
    b'{"a":NaN}',
    b'{"a":-Infinity}',
    b'{"a":"\xed\xa0\x80"}',
    b'{"a":"\\ud800"}',
    b'{"a":1,"a":2}',
    b'{"a":01}',
    b'{"a":1.}',
    b'{"a":[1,]}',
    b"{} x",
    b'{"a":"\x01"}',
    b" {} ",
    b"[]",
    b'"x"',
    b"null",
    b"",
    b'{"a":' + b"[" * 65 + b"]" * 65 + b"}",
    b'{"a":' + b"[" * 63 + b"]" * 63 + b"}",
    # integers int() takes, and one digit more, wherever they fall against the sampling
    *(
        b'{"p":"' + b"x" * pad + b'","n":' + b"7" * digits + b"}"
        for pad in (0, 1, 1000, 2149, 2150, 4299)
        for digits in (4300, 4301)
    ),
    b'{"n":-' + b"1" * 4301 + b"}",
    b'{"n":' + b"1" * 5000 + b".5}",
]


@pytest.mark.parametrize("body", EDGES, ids=range(len(EDGES)))
def test_the_fast_json_check_agrees_with_json(body: bytes) -> None:
    from receiver.app import _json_object

    assert _json_object(body, _utf8(body))[0] is _json_accepts(body)


def test_the_fast_json_check_agrees_with_json_on_mutated_cases() -> None:
    import random

    from receiver.app import _json_object

    rng = random.Random(6)
    base = json.dumps(
        {"cfRef": "CF-ü", "items": [{"n": i, "x": [1.5, None, True, "é"]} for i in range(5)]}
    ).encode()
    for _ in range(3000):
        body = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            body[rng.randrange(len(body))] = rng.choice(b'{}[]",:\\0123456789.eE+-x \xff\xc3')
        verdict = _json_object(bytes(body), _utf8(bytes(body)))
        assert verdict[0] is _json_accepts(bytes(body)), bytes(body)
        if verdict[0]:
            parsed = json.loads(bytes(body))
            assert verdict[1] == parsed.get("cfRef") or verdict[1] != verdict[1]  # NaN
