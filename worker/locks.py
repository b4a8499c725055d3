"""Redis locks, and the one thread per process that keeps the held ones alive.

A lock is a key holding a random token, with a time to live: a holder that dies (even by
SIGKILL) loses it after the TTL. While a holder works, :class:`Renewer` extends its TTL every
third of it. One renewal thread serves every lock of the process: a thread started and joined
per lock cost as much as the Redis round trips of a small file. Release and renewal check the
token, so a holder whose lock expired and was taken over can never touch the new holder's.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from types import TracebackType

import redis

from worker.errors import Busy

#: Poll interval while waiting for a lock another holder has.
WAIT_POLL_SECONDS = 0.1

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def new_token() -> str:
    return secrets.token_hex(16)


class Renewer:
    """Extends the TTL of every lock the process holds, from one daemon thread."""

    def __init__(self, client: redis.Redis, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds
        self._extend = client.register_script(_EXTEND)
        self._held: set[tuple[str, str]] = set()
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, key: str, token: str) -> None:
        with self._mutex:
            self._held.add((key, token))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="casefetch-locks", daemon=True
                )
                self._thread.start()

    def drop(self, key: str, token: str) -> None:
        with self._mutex:
            self._held.discard((key, token))

    def _run(self) -> None:
        # A lock taken just after a pass is extended at the next one, a third of its TTL
        # later: the same margin a thread per lock had.
        ttl_ms = max(1, int(self.ttl_seconds * 1000))
        while True:
            time.sleep(self.ttl_seconds / 3)
            with self._mutex:
                held = list(self._held)
            for key, token in held:
                with contextlib.suppress(redis.exceptions.RedisError):
                    self._extend(keys=[key], args=[token, ttl_ms])


class Locks:
    """Takes and releases locks; the held ones are renewed until released."""

    def __init__(self, client: redis.Redis, ttl_seconds: float) -> None:
        self.redis = client
        self.ttl_seconds = ttl_seconds
        self.renewer = Renewer(client, ttl_seconds)
        self._release = client.register_script(_RELEASE)

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.ttl_seconds * 1000))

    def acquire(self, key: str, wait_seconds: float | None = None) -> HeldLock:
        """The lock, at once or within ``wait_seconds``; Busy otherwise."""
        token = new_token()
        deadline = time.monotonic() + (wait_seconds or 0.0)
        while not self.redis.set(key, token, nx=True, px=self.ttl_ms):
            if wait_seconds is None or time.monotonic() >= deadline:
                raise Busy(key)
            time.sleep(WAIT_POLL_SECONDS)
        return HeldLock(self, key, token)

    def release(self, key: str, token: str) -> None:
        self._release(keys=[key], args=[token])


class HeldLock:
    """A lock taken under ``token``: renewed inside its ``with`` block, released on leaving
    it, unless that is done already (a script that records a result may release the lock in
    the same round trip). One never entered just expires."""

    def __init__(self, locks: Locks, key: str, token: str) -> None:
        self.locks = locks
        self.key = key
        self.token = token
        self.released = False

    def __enter__(self) -> HeldLock:
        self.locks.renewer.hold(self.key, self.token)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.locks.renewer.drop(self.key, self.token)
        if not self.released:
            self.released = True
            self.locks.release(self.key, self.token)
