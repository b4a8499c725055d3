"""Redis locks, and the one thread per process that keeps the held ones alive.

A lock is a key holding a random token, with a time to live: a holder that dies (even by
SIGKILL) loses it after the TTL. While a holder works, :class:`Renewer` extends its TTL every
third of it. One renewal thread serves every lock of the process: a thread started and joined
per lock cost as much as the Redis round trips of a small file. Release and renewal check the
token, so a holder whose lock expired and was taken over can never touch the new holder's.

Fencing: a token starts with a number one Redis counter gives every acquisition
(``<fence>:<random>``), so a later holder of a key always has a higher number than an earlier
one. A holder cut off from Redis longer than the TTL (a network partition, a paused process)
may still believe it holds the lock: before it puts anything in place it confirms, in one
round trip, that the lock still holds its token, and abandons the write otherwise
(:meth:`Locks.confirm`). The same step gives a confirmed lock its whole TTL again: whatever
became of the renewals, no one else can take the lock for a TTL after the check, the time
the write may take.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from types import TracebackType

import redis

from casefetch.constants import FENCE_KEY
from worker.errors import Busy, LockLost

#: Poll interval while waiting for a lock another holder has.
WAIT_POLL_SECONDS = 0.1

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: the lock, the fence counter; ARGV: the random part of the token, the TTL (ms).
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = redis.call('INCR', KEYS[2]) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
"""

# KEYS: locks; ARGV: the TTL (ms), then each lock's token. 1: still ours (and renewed), 0: not.
_CONFIRM = """
local out = {}
for i = 1, #KEYS do
  out[i] = 0
  if redis.call('GET', KEYS[i]) == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    out[i] = 1
  end
end
return out
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def new_token() -> str:
    """The random part of a token (the script that takes the lock puts the fence before it)."""
    return secrets.token_hex(16)


def fence_of(token: str) -> int:
    """The fence number a token starts with."""
    return int(token.partition(":")[0])


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
        self._acquire = client.register_script(_ACQUIRE)
        self._confirm = client.register_script(_CONFIRM)
        self._release = client.register_script(_RELEASE)

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.ttl_seconds * 1000))

    def acquire(self, key: str, wait_seconds: float | None = None) -> HeldLock:
        """The lock, at once or within ``wait_seconds``; Busy otherwise."""
        deadline = time.monotonic() + (wait_seconds or 0.0)
        while not (token := self._acquire(keys=[key, FENCE_KEY], args=[new_token(), self.ttl_ms])):
            if wait_seconds is None or time.monotonic() >= deadline:
                raise Busy(key)
            time.sleep(WAIT_POLL_SECONDS)
        return HeldLock(self, key, _text(token))

    def confirm(self, held: list[HeldLock]) -> list[bool]:
        """Whether each lock is still ours, in one round trip; those that are have their
        whole TTL again, for the write the check lets through (see the module's docstring)."""
        if not held:
            return []
        found = self._confirm(
            keys=[lock.key for lock in held],
            args=[self.ttl_ms, *(lock.token for lock in held)],
        )
        return [bool(int(value)) for value in found]

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

    @property
    def fence(self) -> int:
        return fence_of(self.token)

    def check(self) -> None:
        """Raise LockLost unless the lock is still ours (then it has its whole TTL again)."""
        if not self.locks.confirm([self])[0]:
            raise LockLost(self.key, self.fence)

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


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
