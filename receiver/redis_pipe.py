"""One pipelined Redis connection for the receiver's single round trip per request.

redis-py's asyncio client costs more per command than the rest of a webhook request: a pool
checkout under a lock, a retry wrapper, a timeout per read, one ``send`` per command. The
receiver only ever sends one transaction per request (and ``PING`` for /readyz), so it keeps
one connection and pipelines: the commands of every request handled in one turn of the event
loop leave in one write, and Redis's replies, which come in order, are handed to their
callers in order.

Each caller still waits for *its own* reply: a 2xx is only ever answered after Redis
acknowledged that request's write. A caller may give a timeout: one timer per connection,
not one per command, fails the commands whose reply is late with TimeoutError. When the
connection breaks, every caller still waiting gets a ConnectionError (their writes may or
may not have landed: they answer 503, the sender retries, and the worker takes an identical
re-delivery as a no-op); the next command reconnects.

Only plain ``redis://`` URLs are handled (host, port, user, password, database);
:meth:`RedisPipe.supports` tells, and the receiver uses redis-py for anything else (TLS,
Unix sockets, URL options).
"""

from __future__ import annotations

import asyncio
from collections import deque
from urllib.parse import unquote, urlsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

_CRLF = b"\r\n"


def _reply(buffer: bytearray, start: int) -> tuple[object, int] | None:
    """The RESP2 reply at ``start`` and where the next begins, or None when it is not all
    in yet. An error reply is a ResponseError (returned, not raised)."""
    end = buffer.find(_CRLF, start)
    if end < 0:
        return None
    kind = buffer[start]
    if kind == 0x24:  # $: a bulk string, its length first
        length = int(buffer[start + 1 : end])
        if length < 0:
            return None, end + 2
        if len(buffer) < end + 2 + length + 2:
            return None
        return bytes(buffer[end + 2 : end + 2 + length]), end + 2 + length + 2
    if kind == 0x2A:  # *: an array, its length first
        count = int(buffer[start + 1 : end])
        position = end + 2
        if count < 0:
            return None, position
        items = []
        for _ in range(count):
            item = _reply(buffer, position)
            if item is None:
                return None
            items.append(item[0])
            position = item[1]
        return items, position
    line = bytes(buffer[start + 1 : end])
    if kind == 0x3A:  # :
        return int(line), end + 2
    if kind == 0x2B:  # +
        return line, end + 2
    if kind == 0x2D:  # -
        return ResponseError(line.decode("utf-8", "replace")), end + 2
    raise RedisConnectionError(f"unexpected reply from Redis: {kind:#x}")


def _command(*args: bytes) -> list[bytes]:
    """RESP encoding of one command, as parts to write (the payload is never copied here)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n" % len(arg))
        parts.append(arg)
        parts.append(_CRLF)
    return parts


_NEVER = float("inf")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        #: Commands sent and not answered yet, in order: (their future, their deadline, how
        #: many replies they wait for).
        self.waiters: deque[tuple[asyncio.Future[object], float, int]] = deque()
        self.buffer = bytearray()
        self.outgoing: list[bytes] = []
        self.flush_scheduled = False
        self.lost = False
        self.watchdog: asyncio.TimerHandle | None = None

    # -- writing ----------------------------------------------------------------------------

    def send(
        self, parts: list[bytes], deadline: float = _NEVER, replies: int = 1
    ) -> asyncio.Future[object]:
        """Queue a command (or ``replies`` commands, answered by the last one's reply);
        ``deadline`` is in the loop's time."""
        if self.lost or self.transport is None:
            raise RedisConnectionError("connection to Redis lost")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[object] = loop.create_future()
        self.waiters.append((waiter, deadline, replies))
        self.outgoing.extend(parts)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            loop.call_soon(self.flush)
        if self.watchdog is None and deadline != _NEVER:
            self.watchdog = loop.call_at(deadline, self._expire)
        return waiter

    def _expire(self) -> None:
        """Fail the commands past their deadline; wake up again at the next deadline.

        Their replies may still come: they keep their place in :attr:`waiters`.
        """
        self.watchdog = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        upcoming = _NEVER
        for waiter, deadline, _ in self.waiters:
            if waiter.done():
                continue
            if deadline <= now:
                waiter.set_exception(TimeoutError("Redis did not answer in time"))
            else:
                upcoming = min(upcoming, deadline)
        if upcoming != _NEVER:
            self.watchdog = loop.call_at(upcoming, self._expire)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.outgoing and self.transport is not None and not self.lost:
            data, self.outgoing = self.outgoing, []
            self.transport.write(b"".join(data))

    # -- reading ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            self._parse()
        except RedisConnectionError as exc:
            self._fail(exc)
            if self.transport is not None:
                self.transport.close()

    def _parse(self) -> None:
        buffer = self.buffer
        start = 0
        while True:
            parsed = _reply(buffer, start)
            if parsed is None:
                break
            value, start = parsed
            if not self.waiters:
                raise RedisConnectionError("reply from Redis that nothing asked for")
            waiter, deadline, replies = self.waiters[0]
            if replies > 1:  # a transaction: only its last reply (EXEC's) is its answer
                self.waiters[0] = (waiter, deadline, replies - 1)
                continue
            self.waiters.popleft()
            if not waiter.done():  # its caller may have timed out and gone
                if isinstance(value, Exception):
                    waiter.set_exception(value)
                else:
                    waiter.set_result(value)
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def _fail(self, exc: Exception) -> None:
        self.lost = True
        self.outgoing.clear()
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        while self.waiters:
            waiter = self.waiters.popleft()[0]
            if not waiter.done():
                waiter.set_exception(exc)


def _retrieve(task: asyncio.Task[_Protocol]) -> None:
    if not task.cancelled():
        task.exception()


class RedisPipe:
    def __init__(
        self,
        host: str,
        port: int,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 2.0,
    ) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.username = username
        self.password = password
        self.connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None

    @staticmethod
    def supports(url: str) -> bool:
        parts = urlsplit(url)
        db = parts.path.strip("/")
        return (
            parts.scheme == "redis"
            and not parts.query
            and not parts.fragment
            and (db == "" or db.isdigit())
        )

    @classmethod
    def from_url(cls, url: str, connect_timeout: float = 2.0) -> RedisPipe:
        parts = urlsplit(url)
        db = parts.path.strip("/")
        return cls(
            parts.hostname or "localhost",
            parts.port or 6379,
            int(db or 0),
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None,
            connect_timeout,
        )

    async def execute(self, *args: bytes, timeout: float | None = None) -> object:
        """Send one command and wait for its reply (ResponseError for an error reply,
        TimeoutError when connecting and the reply took more than ``timeout`` seconds)."""
        protocol = self._protocol
        deadline = _NEVER if timeout is None else asyncio.get_running_loop().time() + timeout
        if protocol is None or protocol.lost:
            protocol = await self._connect_by(deadline)
        return await protocol.send(_command(*args), deadline)

    async def _connect_by(self, deadline: float) -> _Protocol:
        if deadline == _NEVER:
            return await self._connect()
        async with asyncio.timeout_at(deadline):
            return await self._connect()

    async def transaction(
        self, *commands: tuple[bytes, ...], timeout: float | None = None
    ) -> list[object]:
        """Run ``commands`` in MULTI/EXEC (atomically, and none if the connection breaks before
        EXEC); their replies, an error reply raised."""
        protocol = self._protocol
        deadline = _NEVER if timeout is None else asyncio.get_running_loop().time() + timeout
        if protocol is None or protocol.lost:
            protocol = await self._connect_by(deadline)
        parts = _command(b"MULTI")
        for command in commands:
            parts += _command(*command)
        parts += _command(b"EXEC")
        # One send: no other caller's command can land inside the transaction.
        replies = await protocol.send(parts, deadline, len(commands) + 2)
        if not isinstance(replies, list):
            raise ResponseError(f"transaction not run: {replies!r}")
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def lpush(self, key: str, value: bytes) -> object:
        return await self.execute(b"LPUSH", key.encode(), value)

    async def ping(self, timeout: float | None = None) -> bool:
        return await self.execute(b"PING", timeout=timeout) == b"PONG"

    async def _connect(self) -> _Protocol:
        # Requests arriving while a connection is being made all wait for that one.
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._open())
            # Its callers may all have timed out: the failure is theirs, not the loop's log's.
            self._connecting.add_done_callback(_retrieve)
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, protocol = await loop.create_connection(_Protocol, self.host, self.port)
                setup = []
                if self.password is not None:
                    credentials = [self.username.encode()] if self.username else []
                    setup.append(
                        protocol.send(_command(b"AUTH", *credentials, self.password.encode()))
                    )
                if self.db:
                    setup.append(protocol.send(_command(b"SELECT", str(self.db).encode())))
                for reply in setup:
                    await reply
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(
                f"cannot connect to Redis at {self.host}:{self.port}: {exc}"
            ) from exc
        except ResponseError:
            transport.close()  # a refused AUTH or SELECT: this connection is of no use
            raise
        self._protocol = protocol
        return protocol

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
