"""Structured logs: one JSON object per line when stdout is not a terminal, readable text on one.

Every line carries ``ts``, ``level``, ``logger`` and ``msg``, plus the fields bound to the
current context (``deliveryId``, ``cfRef``, ... see :func:`bound`) and those passed with
``extra=fields(...)``. Secrets never reach a log: callers pass no credentials, no headers and
no signed URLs (only archive paths).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, TextIO

from casefetch import codec
from casefetch.protocol import utc_iso

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


def _milliseconds(timestamp: float) -> int:
    # The fraction rounded to the microsecond first, as datetime.fromtimestamp does.
    seconds = int(timestamp)
    return (seconds * 1_000_000 + round((timestamp - seconds) * 1_000_000)) // 1000


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": utc_iso(_milliseconds(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return codec.compact(line, default=str).decode()


class BatchedLines:
    """One logger's INFO lines on a hot path, as :class:`JsonFormatter` would write them, for a
    fraction of the cost: formatted directly with orjson (no LogRecord, no handler chain) and
    written by the event loop in batches, one write every ``flush_seconds`` at most instead of
    one per line. :meth:`close` (on shutdown) writes what is left.

    Only when the logger's lines would go to the one JSON handler :func:`setup` installs;
    otherwise (a terminal, a test's capture handler, another level) through ``logger.info``.
    Use it from the event loop's thread only.
    """

    def __init__(
        self, logger: logging.Logger, flush_seconds: float = 0.05, max_buffered: int = 65536
    ) -> None:
        self.logger = logger
        self.flush_seconds = flush_seconds
        self.max_buffered = max_buffered
        self._lines: list[bytes] = []
        self._size = 0
        #: Where the buffered lines go: the handler there was when the first was buffered.
        self._handler: logging.StreamHandler[TextIO] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def _target(self) -> logging.StreamHandler[TextIO] | None:
        logger: logging.Logger | None = self.logger
        found: list[logging.Handler] = []
        while logger is not None:
            found.extend(logger.handlers)
            if not logger.propagate:
                break
            logger = logger.parent
        if len(found) != 1:
            return None
        handler = found[0]
        if (
            type(handler) is not logging.StreamHandler
            or handler.filters
            or type(handler.formatter) is not JsonFormatter
            or handler.level > logging.INFO
        ):
            return None
        return handler

    def info(self, msg: str, **values: Any) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        handler = self._target()
        if handler is None:
            self.flush()  # keep the order of lines
            self.logger.info(msg, extra=fields(**values))
            return
        if handler is not self._handler:
            self.flush()
            self._handler = handler
        line: dict[str, Any] = {
            "ts": utc_iso(time.time_ns() // 1_000_000),
            "level": "info",
            "logger": self.logger.name,
            "msg": msg,
        }
        # As record_fields merges them: the bound context, then the call's own fields.
        own = {k: v for k, v in values.items() if v is not None}
        context = _context.get()
        merged = {**{k: v for k, v in context.items() if v is not None}, **own} if context else own
        for key, value in merged.items():
            line.setdefault(key, value)
        data = codec.compact(line, default=str) + b"\n"
        self._lines.append(data)
        self._size += len(data)
        if self._size >= self.max_buffered:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_seconds, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        text = b"".join(self._lines).decode()
        self._lines.clear()
        self._size = 0
        handler = self._handler
        assert handler is not None
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.stream.flush()
        except (OSError, ValueError):  # as logging does: a broken log stream stops no one
            if logging.raiseExceptions:
                sys.stderr.write("casefetch: could not write log lines\n")
        finally:
            handler.release()

    def close(self) -> None:
        self.flush()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = record_fields(record)
        if extra:
            text += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return text


def setup(
    level: str | int = logging.INFO, json_lines: bool | None = None, stream: TextIO | None = None
) -> None:
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
