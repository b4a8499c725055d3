"""Numbers in response headers, read strictly: only ASCII digits are a number.

``str.isdigit`` and ``int`` accept far more (``"²".isdigit()``, ``int("١٢")``); a host that
sends those is not speaking HTTP, and what it meant is not guessed. These functions never
raise: a header that is not a number is absent (Retry-After) or :data:`INVALID`
(Content-Length, which the fetcher treats as a protocol error of the host, retried).
"""

from __future__ import annotations

import email.utils
import time
from datetime import UTC

#: What :func:`content_length` returns for a Content-Length that is not a length.
INVALID = -1
#: Longest Retry-After honoured, in seconds; the fetcher caps it lower anyway.
RETRY_AFTER_MAX = 86_400.0

#: More than any file or wait: what a longer number reads as.
HUGE = 10**18

_DIGITS = frozenset("0123456789")
_OWS = " \t"


def ascii_number(text: str) -> int | None:
    """``text`` (optional whitespace around) as a number if it is ASCII digits only; a number
    over :data:`HUGE` is HUGE (``int`` refuses strings of over 4300 digits)."""
    text = text.strip(_OWS).lstrip("0") or text.strip(_OWS)[-1:]
    if not text or not _DIGITS.issuperset(text):
        return None
    return int(text) if len(text) <= 18 else HUGE


def content_length(value: str | None) -> int | None:
    """The body length a Content-Length header declares: None when there is none,
    :data:`INVALID` when it is not a length. A list of one value repeated (``5, 5``, which
    a proxy may send) is that value (RFC 9110, 8.6)."""
    if value is None:
        return None
    values = {ascii_number(part) for part in value.split(",")}
    if len(values) != 1:
        return INVALID
    (length,) = values
    return INVALID if length is None else length


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks to wait (delay-seconds or an HTTP date), or None."""
    if not value:
        return None
    seconds = ascii_number(value)
    if seconds is not None:
        return min(float(min(seconds, int(RETRY_AFTER_MAX))), RETRY_AFTER_MAX)
    if not value.isascii():
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip(_OWS))
        # A date without a zone ("-0000") is naive here; HTTP dates are GMT.
        stamp = when.timestamp() if when.tzinfo else when.replace(tzinfo=UTC).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    wait = stamp - (time.time() if now is None else now)
    return min(max(0.0, wait), RETRY_AFTER_MAX)
