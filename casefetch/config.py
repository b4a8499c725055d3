"""Reading settings from the environment.

Every variable ``X`` may instead be given as ``X_FILE``, the path of a file holding the value
(Docker secrets). Parsing is strict: a malformed value is a ConfigError naming the variable,
never a silent default.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from casefetch.errors import ConfigError

Env = Mapping[str, str]
_N = TypeVar("_N", int, float)


def read(env: Env, name: str, default: str | None = None) -> str | None:
    file_path = env.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE", f"cannot read {file_path}: {exc.strerror}") from exc
    value = env.get(name)
    if value is None or value == "":
        return default
    return value


def read_str(env: Env, name: str, default: str) -> str:
    value = read(env, name)
    return default if value is None else value


def _read_number(
    env: Env, name: str, default: _N, minimum: _N, cast: Callable[[str], _N], expected: str
) -> _N:
    value = read(env, name)
    if value is None:
        return default
    try:
        number = cast(value)
    except ValueError as exc:
        raise ConfigError(name, f"expected {expected}, got {value!r}") from exc
    if number < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {number}")
    return number


def read_int(env: Env, name: str, default: int, minimum: int = 0) -> int:
    return _read_number(env, name, default, minimum, int, "a whole number")


def read_float(env: Env, name: str, default: float, minimum: float = 0.0) -> float:
    return _read_number(env, name, default, minimum, float, "a number")


def read_bool(env: Env, name: str, default: bool) -> bool:
    value = read(env, name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(name, f"expected true or false, got {value!r}")


def read_list(env: Env, name: str) -> tuple[str, ...]:
    value = read(env, name)
    if value is None:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _split(text: str, at_last: bool) -> tuple[str, str] | None:
    left, sep, right = text.rpartition(":") if at_last else text.partition(":")
    left, right = left.strip(), right.strip()
    return (left, right) if sep and left and right else None


def split_hmac_key(text: str) -> tuple[str, str] | None:
    """``apiKey:apiSecretKey`` → (apiKey, apiSecretKey), split at the last colon as the
    receiver splits ``HMAC-SHA256 <apiKey>:<signature>``: an apiKey may hold ``:``, a secret
    may not. Spaces around the colon are dropped; None unless both sides are there."""
    return _split(text, at_last=True)


def split_basic_user(text: str) -> tuple[str, str] | None:
    """``username:password`` → (username, password), split at the first colon: a user id
    cannot hold ``:`` (RFC 7617), a password may. Spaces around the colon are dropped."""
    return _split(text, at_last=False)


def read_pairs(
    env: Env, name: str, split: Callable[[str], tuple[str, str] | None]
) -> tuple[tuple[str, str], ...]:
    """``a:b, c:d`` → ((a, b), (c, d)), each pair taken apart by ``split``."""
    pairs = []
    for part in read_list(env, name):
        pair = split(part)
        if pair is None:
            raise ConfigError(name, "expected comma-separated name:secret pairs")
        pairs.append(pair)
    return tuple(pairs)


def read_json_object(env: Env, name: str) -> dict[str, str]:
    value = read(env, name)
    if value is None:
        return {}
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise ConfigError(name, "expected a JSON object") from exc
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
    ):
        raise ConfigError(name, "expected a JSON object of string values")
    return parsed


def environ() -> Env:
    return os.environ


DEFAULT_REDIS_URL = "redis://localhost:6379/0"


_REDIS_SCHEMES = ("redis", "rediss", "unix")
#: ``?password=...`` is a password too, to redis-py.
_PASSWORD_PARAMETER = re.compile(r"(?i)([?&]password=)[^&#]*")


def redis_url(env: Env) -> str:
    """REDIS_URL, checked: one server's URL, or a ``;``-separated list of Sentinel addresses
    (:mod:`casefetch.redis_target` takes those apart)."""
    url = read_str(env, "REDIS_URL", DEFAULT_REDIS_URL).strip()
    sentinels = url.lower().startswith("sentinel://")
    for address in url.split(";") if sentinels else [url]:
        try:
            parts = urlsplit(address.strip())
            _ = parts.port  # a port that is not a number, or out of range, raises here
        except ValueError as exc:
            raise ConfigError("REDIS_URL", f"{exc} in {redact_url(url)}") from None
        scheme = parts.scheme.lower()
        if (scheme != "sentinel") if sentinels else (scheme not in _REDIS_SCHEMES):
            raise ConfigError(
                "REDIS_URL",
                f"expected redis://, rediss://, unix:// or sentinel://, got {redact_url(url)}",
            )
    return url


def redact_url(url: str) -> str:
    """``url`` as it may be printed or logged: its password replaced by ``***`` (and the
    whole user part when it is a single word, which redis-py may take as a password).

    Taken apart by hand, not with urlsplit: a URL that does not parse is redacted too. A
    ``;``-separated list (Sentinel addresses) is redacted address by address.
    """
    if url.lower().startswith("sentinel://") and ";" in url:
        return ";".join(redact_url(part) for part in url.split(";"))
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" if "@" in url else url
    end = min(
        (i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest)
    )
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, host = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = (f"{user}:***" if colon else "***") + "@" + host
    return f"{scheme}://{netloc}" + _PASSWORD_PARAMETER.sub(r"\1***", tail)
