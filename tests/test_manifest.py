"""The JSON helpers the worker uses for manifests and Redis entries: orjson's speed, the
standard library's reach."""

from __future__ import annotations

import json

import pytest

from casefetch.codec import compact as compact_json
from casefetch.codec import loads as parse_json


@pytest.mark.parametrize(
    "value",
    [
        {"path": "case.pdf", "bytes": 123, "sha256": "ab" * 32, "error": None, "ok": True},
        {"sourceUrl": "https://files/é?sig=a+b", "n": 1.5, "items": [1, "two", None]},
        {"lone": "\ud800", "big": 2**70},  # what orjson refuses, both ways
    ],
)
def test_round_trips_like_the_standard_library(value: dict[str, object]) -> None:
    assert parse_json(compact_json(value)) == value
    assert parse_json(json.dumps(value)) == json.loads(json.dumps(value))


def test_invalid_json_still_raises_value_error() -> None:
    with pytest.raises(ValueError):
        parse_json(b"{not json")
