"""Waiting for another process to have done something, with a deadline."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from casefetch_tools.polling import poll

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 20.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    value = poll(predicate, timeout, interval)
    if not value:
        raise AssertionError(f"timed out after {timeout}s waiting for {message}")
    return value
