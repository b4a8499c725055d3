"""JSON in and out, spelled once for both sides.

orjson is several times faster than the standard library on every JSON the pipeline writes and
reads per webhook (docs/benchmarks.md#json); the standard library takes what orjson refuses —
a lone surrogate (undecodable header bytes, a cfRef a sender got wrong) or an integer over 64
bits — so every value the standard library handles still goes through.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson


def compact(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """Compact JSON in UTF-8 (messages, inbox and Redis entries, log lines); what orjson
    refuses comes out ASCII-escaped."""
    try:
        return orjson.dumps(value, default=default)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), default=default).encode("ascii")


def pretty(value: Any) -> bytes:
    """The bytes of ``json.dumps(value, ensure_ascii=False, indent=2)`` in UTF-8 (manifests,
    quarantine records); a lone surrogate, which UTF-8 cannot carry, stays escaped."""
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2)
    except TypeError:
        pass
    text = json.dumps(value, ensure_ascii=False, indent=2)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, indent=2).encode("ascii")


def loads(raw: bytes | str) -> Any:
    """``json.loads``: what it accepts and orjson refuses goes the standard library's way."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)
