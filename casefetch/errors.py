"""Errors shared by the command line, the receiver and the worker.

CasefetchError
 └── ConfigError          a setting is missing or malformed
"""

from __future__ import annotations


class CasefetchError(Exception):
    """Root of every error casefetch raises on purpose."""


class ConfigError(CasefetchError):
    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{variable}: {reason}")
        self.variable = variable
        self.reason = reason
