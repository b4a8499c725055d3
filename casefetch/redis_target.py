"""Where Redis is: one server named by a URL, or the Sentinels that know which server is the
primary.

``REDIS_URL`` takes either form:

- ``redis://[[user]:password@]host[:port][/db]`` (or ``rediss://``, ``unix://``): one server;
- ``sentinel://[[user]:password@]host:port[/db];sentinel://host:port;...``: kombu's form, the
  Sentinels separated by ``;``. The password and database are those of the Redis primary
  (and its replicas), read from the first address. ``REDIS_SENTINEL_MASTER`` names the
  primary the Sentinels monitor (default ``mymaster``); ``REDIS_SENTINEL_PASSWORD`` is the
  Sentinels' own password, when they require one.

Every part of casefetch builds its Redis client here, so each follows a failover the same way:
asking a Sentinel for the current primary whenever a connection is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from casefetch import config
from casefetch.errors import ConfigError

SENTINEL_SCHEME = "sentinel"
DEFAULT_MASTER = "mymaster"
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class RedisTarget:
    url: str
    #: (host, port) of each Sentinel; empty for a plain URL.
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = DEFAULT_MASTER
    sentinel_password: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_env(cls, env: config.Env) -> RedisTarget:
        return cls.parse(
            config.redis_url(env),
            config.read_str(env, "REDIS_SENTINEL_MASTER", DEFAULT_MASTER),
            config.read(env, "REDIS_SENTINEL_PASSWORD"),
        )

    @classmethod
    def parse(
        cls, url: str, master: str = DEFAULT_MASTER, sentinel_password: str | None = None
    ) -> RedisTarget:
        """The target ``url`` names; ConfigError (naming REDIS_URL) for a Sentinel list that
        does not parse."""
        if not is_sentinel_url(url):
            return cls(url)
        addresses = [part.strip() for part in url.split(";") if part.strip()]
        sentinels = []
        for address in addresses:
            parts = urlsplit(address)
            if parts.scheme.lower() != SENTINEL_SCHEME or not parts.hostname:
                raise ConfigError(
                    "REDIS_URL", f"expected sentinel://host:port;..., got {config.redact_url(url)}"
                )
            try:
                port = parts.port or DEFAULT_SENTINEL_PORT
            except ValueError as exc:
                raise ConfigError("REDIS_URL", f"{exc} in {config.redact_url(url)}") from None
            sentinels.append((parts.hostname, port))
        first = urlsplit(addresses[0])
        db = first.path.strip("/")
        if db and not db.isdigit():
            raise ConfigError(
                "REDIS_URL", f"the database must be a number, got {config.redact_url(url)}"
            )
        if not master:
            raise ConfigError("REDIS_SENTINEL_MASTER", "must name the primary's master name")
        return cls(
            url,
            tuple(sentinels),
            master,
            sentinel_password,
            int(db or 0),
            unquote(first.username) if first.username else None,
            unquote(first.password) if first.password else None,
        )

    @property
    def uses_sentinel(self) -> bool:
        return bool(self.sentinels)

    def describe(self) -> str:
        """The target as it may be printed: passwords redacted, the master named."""
        if self.uses_sentinel:
            return f"{config.redact_url(self.url)} (master {self.master})"
        return config.redact_url(self.url)

    def client(self, **options: Any) -> redis.Redis:
        """A redis-py client of the primary, with redis-py ``options`` (timeouts...)."""
        if not self.uses_sentinel:
            return redis.Redis.from_url(self.url, **options)
        sentinel = Sentinel(
            list(self.sentinels), sentinel_kwargs=self._sentinel_options(options), **options
        )
        return cast(redis.Redis, sentinel.master_for(self.master, **self._primary_options()))

    def async_client(self, **options: Any) -> aioredis.Redis:
        """The same, for asyncio."""
        if not self.uses_sentinel:
            return aioredis.Redis.from_url(self.url, **options)
        sentinel = AsyncSentinel(
            list(self.sentinels), sentinel_kwargs=self._sentinel_options(options), **options
        )
        primary = sentinel.master_for(self.master, **self._primary_options())
        return cast(aioredis.Redis, primary)

    def transport_options(self) -> dict[str, Any]:
        """What kombu's Redis transport needs beside the URL to find the primary."""
        if not self.uses_sentinel:
            return {}
        options: dict[str, Any] = {"master_name": self.master}
        if self.sentinel_password is not None:
            options["sentinel_kwargs"] = {"password": self.sentinel_password}
        return options

    def _primary_options(self) -> dict[str, Any]:
        return {"db": self.db, "username": self.username, "password": self.password}

    def _sentinel_options(self, options: dict[str, Any]) -> dict[str, Any]:
        sentinel = {k: v for k, v in options.items() if k.startswith("socket_")}
        if self.sentinel_password is not None:
            sentinel["password"] = self.sentinel_password
        return sentinel


#: REDIS_URL's default: the Redis on this machine.
DEFAULT_TARGET = RedisTarget(config.DEFAULT_REDIS_URL)


def is_sentinel_url(url: str) -> bool:
    return url.strip().lower().startswith(f"{SENTINEL_SCHEME}://")
