"""How every casefetch command ends on an expected failure: one line on stderr, no
traceback, a non-zero exit code (2 for bad input or settings, 1 for a missing service)."""

from __future__ import annotations

import sys
from typing import NoReturn

import click


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"casefetch: {message}", err=True)
    sys.exit(code)
