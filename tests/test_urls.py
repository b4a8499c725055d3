"""URLs as a browser requests them (units, and a property over any text)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_headers import PROPERTIES
from worker.urls import InvalidUrl, request_url


@pytest.mark.parametrize(
    "url,expected",
    [
        ("https://host/rapport-été.pdf", "https://host/rapport-%C3%A9t%C3%A9.pdf"),
        (
            "https://files.example.com/c.pdf?X-Sig=a%2Fb&e=1",
            "https://files.example.com/c.pdf?X-Sig=a%2Fb&e=1",
        ),
        (
            "https://Bücher.Example/a b/ü?q=é&x='1'#frag",
            "https://xn--bcher-kva.example/a%20b/%C3%BC?q=%C3%A9&x=%271%27",
        ),
        ("http://h/déjà%20vu%zz", "http://h/d%C3%A9j%C3%A0%20vu%zz"),  # escapes are kept
        ("  http://h/a\tb\n ", "http://h/ab"),
        ("http://[::1]:8080/é", "http://[::1]:8080/%C3%A9"),
        ("http://user:pässe@h/", "http://user:p%C3%A4sse@h/"),
        ("http://h/\ud800", "http://h/%EF%BF%BD"),  # a lone surrogate, as JSON may carry
        (
            "http://例え.テスト/ファイル",
            "http://xn--r8jz45g.xn--zckzah/%E3%83%95%E3%82%A1%E3%82%A4%E3%83%AB",
        ),
    ],
)
def test_a_url_becomes_what_a_browser_sends(url: str, expected: str) -> None:
    assert request_url(url) == expected
    assert request_url(expected) == expected  # nothing escaped twice


@pytest.mark.parametrize(
    "url",
    [
        "https:////\x18\u00cb",
        "http:/path",
        "http://:80/",
        "http://h:99999/",
        "http://h:port/",
        "http://[::1/",
        "http://exa mple/",
        "http://a<b/",
        "http://\u00ad/",
        "http://" + "é" * 80 + ".test/",
    ],
)
def test_what_cannot_become_a_request_is_an_invalid_url(url: str) -> None:
    with pytest.raises(InvalidUrl):
        request_url(url)


@PROPERTIES
@given(
    url=st.text(max_size=80)
    | st.builds(
        lambda host, path: f"https://{host}/{path}",
        st.text(min_size=1, max_size=30),
        st.text(max_size=40),
    )
)
def test_any_text_is_an_ascii_request_or_an_invalid_url(url: str) -> None:
    try:
        requested = request_url(url)
    except InvalidUrl:
        return
    assert requested.isascii()
    assert not any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in requested)
    assert request_url(requested) == requested
