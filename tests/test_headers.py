"""Numbers in response headers: only ASCII digits are numbers; anything else, never an
exception (units, and properties over any header text)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from worker.headers import HUGE, INVALID, ascii_number, content_length, retry_after

#: Reproducible in CI (same examples every run), exploratory on a developer's machine.
PROPERTIES = settings(
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    derandomize=bool(os.environ.get("CI")),
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow],
)

#: What hosts really send, and what only looks like it (digits of other scripts).
OTHER_DIGITS = "\u00b9\u00b2\u00b3\u0661\u0662\u0663\uff10\uff11\u066b\u00a0"
header_text = st.text(
    alphabet=st.sampled_from("0123456789 \t,-+.e" + OTHER_DIGITS) | st.characters(), max_size=40
)


@pytest.mark.parametrize(
    "value,expected",
    [
        (None, None),
        ("0", 0),
        ("1234", 1234),
        (" 12 ", 12),
        ("12, 12", 12),
        ("007", 7),
        ("\u00b2", INVALID),
        ("\u0661\u0662", INVALID),
        ("\uff11\uff12", INVALID),
        ("12, 13", INVALID),
        ("-1", INVALID),
        ("1e3", INVALID),
        ("", INVALID),
        ("9" * 5000, HUGE),
    ],
)
def test_content_length(value: str | None, expected: int | None) -> None:
    assert content_length(value) == expected


@pytest.mark.parametrize(
    "value,expected",
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("\u00b9", None),
        ("\u0663", None),
        ("0.5", None),
        ("-3", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("9" * 5000, 86_400.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:28:10 -0000", 10.0),
        ("Wed, 21 Oct 99999 07:28:10 GMT", None),
    ],
)
def test_retry_after(value: str | None, expected: float | None) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert retry_after(value, now=now) == expected


@PROPERTIES
@given(text=header_text)
def test_any_header_text_is_a_number_or_nothing(text: str) -> None:
    number = ascii_number(text)
    digits = text.strip(" \t")
    if digits and digits.isascii() and digits.isdigit():
        assert number == min(int(digits), HUGE) if len(digits) < 4000 else number == HUGE
    else:
        assert number is None
    length = content_length(text)
    assert length == INVALID or (isinstance(length, int) and length >= 0)
    wait = retry_after(text)
    assert wait is None or 0.0 <= wait <= 86_400.0


@PROPERTIES
@given(
    text=st.text(max_size=60)
    | st.datetimes().map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT"))
    | st.from_regex(
        r"\A[A-Za-z]{3}, \d{1,2} [A-Za-z]{3} \d{1,6} \d{1,2}:\d{1,2}:\d{1,2} [A-Z+-]{0,5}\d{0,4}\Z"
    )
)
def test_any_retry_after_is_a_bounded_wait_or_nothing(text: str) -> None:
    wait = retry_after(text)
    assert wait is None or 0.0 <= wait <= 86_400.0
