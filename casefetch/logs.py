"""Structured logs: one JSON object per line when stdout is not a terminal, readable text on one.

Every line carries ``ts``, ``level``, ``logger`` and ``msg``, plus the fields bound to the
current context (``deliveryId``, ``cfRef``, ... see :func:`bound`) and those passed with
``extra=fields(...)``. Secrets never reach a log: callers pass no credentials, no headers and
no signed URLs (only archive paths).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

#: Fields added to every line logged in this context (a task, a request).
_context: ContextVar[dict[str, Any] | None] = ContextVar("casefetch_log_context", default=None)
_FIELDS = "casefetch_fields"


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for one log call: ``log.info("file stored", extra=fields(bytes=12))``."""
    return {_FIELDS: {k: v for k, v in values.items() if v is not None}}


@contextlib.contextmanager
def bound(**values: Any) -> Iterator[None]:
    token = _context.set({**(_context.get() or {}), **values})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**values: Any) -> None:
    """Bind fields until :func:`clear` (for code that cannot wrap a block, e.g. task signals)."""
    _context.set({**(_context.get() or {}), **values})


def clear() -> None:
    _context.set(None)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record: bound context first, then the call's own."""
    found = {k: v for k, v in (_context.get() or {}).items() if v is not None}
    found.update(getattr(record, _FIELDS, {}))
    return found


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        try:
            # orjson: the receiver writes one of these per accepted webhook.
            return orjson.dumps(line, default=str).decode()
        except TypeError:
            # Text orjson refuses (a lone surrogate in a cfRef, say) is escaped instead.
            return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = record_fields(record)
        if extra:
            text += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return text


def setup(level: str | int = logging.INFO, json_lines: bool | None = None,
          stream: TextIO | None = None) -> None:
    """Configure the root logger once, for the receiver, worker and run commands."""
    stream = stream or sys.stderr
    if json_lines is None:
        json_lines = not (sys.stdout.isatty() and stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
