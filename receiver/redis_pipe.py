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

Under Sentinel, each (re)connection asks the sentinels, in order, for the primary's address,
and a server that is not a primary (``ROLE``) is refused. A ``-READONLY`` or ``-LOADING``
reply (a primary demoted or restarting) drops the connection as a broken one does: the next
command reconnects through the sentinels, and the pipe follows a failover without a restart.

With replicas to wait for, a transaction's write is only acknowledged once Redis's ``WAIT``
says enough replicas have it. ``WAIT`` blocks the connection it is sent on, so one is sent per
write of the connection (the transactions of one turn of the event loop), after the last of
them: it counts the connection's latest write, so it covers every transaction before it.

Only plain ``redis://`` URLs and Sentinel targets are handled (host, port, user, password,
database); :meth:`RedisPipe.for_target` tells, and the receiver uses redis-py for anything else
(TLS, Unix sockets, URL options).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.exceptions import BusyLoadingError, ReadOnlyError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from casefetch.redis_target import RedisTarget

_CRLF = b"\r\n"
#: Error replies of a server that cannot take writes now: a replica (a demoted primary) or a
#: server loading its data. The connection is dropped; the next one asks the sentinels.
_NOT_A_PRIMARY: dict[str, type[RedisError]] = {
    "READONLY": ReadOnlyError,
    "LOADING": BusyLoadingError,
}

_NOT_A_PRIMARY_ERRORS = tuple(_NOT_A_PRIMARY.values())


class TooFewReplicas(RedisError):
    """``WAIT`` counted fewer replicas holding the write than required (in time)."""

    def __init__(self, acknowledged: int, required: int) -> None:
        super().__init__(f"{acknowledged} of {required} replicas acknowledged the write in time")
        self.acknowledged = acknowledged
        self.required = required


def wait_milliseconds(remaining: float) -> int:
    """``WAIT``'s timeout for ``remaining`` seconds: nine tenths of it, so its answer is back
    before the caller's deadline; never 0, which would make WAIT block forever."""
    return max(1, int(remaining * 900))


def _reply(buffer: bytearray, start: int) -> tuple[object, int] | None:
    """The RESP2 reply at ``start`` and where the next begins, or None when it is not all
    in yet. An error reply is a RedisError (returned, not raised): a ResponseError, or one
    of :data:`_NOT_A_PRIMARY`."""
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
        text = line.decode("utf-8", "replace")
        return _NOT_A_PRIMARY.get(text.partition(" ")[0], ResponseError)(text), end + 2
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
    def __init__(self, drop_when_late: bool = False) -> None:
        #: Whether a command past its deadline drops the connection (see :class:`RedisPipe`).
        self.drop_when_late = drop_when_late
        self.transport: asyncio.Transport | None = None
        #: Commands sent and not answered yet, in order: (their future, their deadline, how
        #: many replies they wait for).
        self.waiters: deque[tuple[asyncio.Future[object], float, int]] = deque()
        self.buffer = bytearray()
        self.outgoing: list[bytes] = []
        self.flush_scheduled = False
        self.lost = False
        self.watchdog: asyncio.TimerHandle | None = None
        #: The ``WAIT`` to send after the write being gathered: its future (shared by every
        #: transaction in the write), the earliest deadline among them, how many replicas.
        self.wait: tuple[asyncio.Future[object], float, int] | None = None

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

    def acknowledged(self, replicas: int, deadline: float) -> asyncio.Future[object]:
        """The number of replicas holding what was sent so far, once at least ``replicas``
        do or ``WAIT``'s timeout (from ``deadline``) passed: sent with the next write."""
        if self.wait is None:
            waiter: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            # A caller whose transaction failed never looks at it: nor does the loop's log.
            waiter.add_done_callback(_retrieve)
            self.wait = (waiter, deadline, replicas)
            return waiter
        waiter, earliest, most = self.wait
        self.wait = (waiter, min(earliest, deadline), max(most, replicas))
        return waiter

    def _expire(self) -> None:
        """Fail the commands past their deadline; wake up again at the next deadline.

        Their replies may still come: they keep their place in :attr:`waiters`, unless
        :attr:`drop_when_late`, which drops the connection.
        """
        self.watchdog = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        upcoming = _NEVER
        late = False
        for waiter, deadline, _ in self.waiters:
            if waiter.done():
                continue
            if deadline <= now:
                waiter.set_exception(TimeoutError("Redis did not answer in time"))
                late = True
            else:
                upcoming = min(upcoming, deadline)
        if late and self.drop_when_late:
            self._fail(RedisConnectionError("Redis did not answer in time: connection dropped"))
            if self.transport is not None:
                self.transport.close()
        elif upcoming != _NEVER:
            self.watchdog = loop.call_at(upcoming, self._expire)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.outgoing and self.transport is not None and not self.lost:
            if self.wait is not None:
                waiter, deadline, replicas = self.wait
                self.wait = None
                milliseconds = (
                    0
                    if deadline == _NEVER
                    else wait_milliseconds(deadline - asyncio.get_running_loop().time())
                )
                self.outgoing += _command(b"WAIT", b"%d" % replicas, b"%d" % milliseconds)
                self.waiters.append((waiter, deadline, 1))
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
        demoted: RedisError | None = None
        while True:
            parsed = _reply(buffer, start)
            if parsed is None:
                break
            value, start = parsed
            if not self.waiters:
                raise RedisConnectionError("reply from Redis that nothing asked for")
            if isinstance(value, _NOT_A_PRIMARY_ERRORS):
                demoted = value
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
        if demoted is not None:
            self._fail(RedisConnectionError(f"Redis no longer takes writes here: {demoted}"))
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def _fail(self, exc: Exception) -> None:
        self.lost = True
        self.outgoing.clear()
        if self.wait is not None:
            self.waiters.append((self.wait[0], _NEVER, 1))
            self.wait = None
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        while self.waiters:
            waiter = self.waiters.popleft()[0]
            if not waiter.done():
                waiter.set_exception(exc)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class RedisPipe:
    """One pipelined connection to the Redis at ``host``:``port``, or to the primary that
    ``sentinels`` (their addresses, in the order they are asked) name for ``master``.

    Under Sentinel a command past its deadline also drops the connection: a primary that
    went silent (a partition, a host gone without closing its sockets) is the failover case
    that no error reply or closed socket announces, and only a new connection asks the
    sentinels again. One server named by its URL keeps the connection (the late reply keeps
    its place): reconnecting to the same address would not help.
    """

    def __init__(
        self,
        host: str,
        port: int,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 2.0,
        sentinels: tuple[tuple[str, int], ...] = (),
        master: str = "",
        sentinel_password: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.username = username
        self.password = password
        self.connect_timeout = connect_timeout
        self.sentinels = sentinels
        self.master = master
        self.sentinel_password = sentinel_password
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

    @classmethod
    def for_target(cls, target: RedisTarget, connect_timeout: float = 2.0) -> RedisPipe | None:
        """A pipe to ``target``, or None when it is not one the pipe handles."""
        if not target.uses_sentinel:
            return cls.from_url(target.url, connect_timeout) if cls.supports(target.url) else None
        return cls(
            "",
            0,
            target.db,
            target.username,
            target.password,
            connect_timeout,
            target.sentinels,
            target.master,
            target.sentinel_password,
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
        self, *commands: tuple[bytes, ...], timeout: float | None = None, replicas: int = 0
    ) -> list[object]:
        """Run ``commands`` in MULTI/EXEC (atomically, and none if the connection breaks before
        EXEC); their replies, an error reply raised. With ``replicas``, only once that many
        replicas have the write (``WAIT``), else TooFewReplicas."""
        protocol = self._protocol
        deadline = _NEVER if timeout is None else asyncio.get_running_loop().time() + timeout
        if protocol is None or protocol.lost:
            protocol = await self._connect_by(deadline)
        parts = _command(b"MULTI")
        for command in commands:
            parts += _command(*command)
        parts += _command(b"EXEC")
        # One send: no other caller's command can land inside the transaction.
        executed = protocol.send(parts, deadline, len(commands) + 2)
        acknowledged = protocol.acknowledged(replicas, deadline) if replicas else None
        replies = await executed
        if not isinstance(replies, list):
            raise ResponseError(f"transaction not run: {replies!r}")
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        if acknowledged is not None:
            count = await acknowledged
            if not isinstance(count, int) or count < replicas:
                raise TooFewReplicas(count if isinstance(count, int) else 0, replicas)
        return replies

    async def lpush(self, key: str, value: bytes) -> object:
        return await self.execute(b"LPUSH", key.encode(), value)

    async def ping(self, timeout: float | None = None) -> bool:
        return await self.execute(b"PING", timeout=timeout) == b"PONG"

    async def replicas(self, timeout: float | None = None) -> int:
        """How many replicas are in sync with the primary now (:func:`online_replicas`)."""
        info = await self.execute(b"INFO", b"replication", timeout=timeout)
        if not isinstance(info, bytes):
            raise ResponseError(f"unexpected INFO reply: {info!r}")
        return online_replicas(info.decode("utf-8", "replace"))

    async def _connect(self) -> _Protocol:
        # Requests arriving while a connection is being made all wait for that one.
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._open())
            # Its callers may all have timed out: the failure is theirs, not the loop's log's.
            self._connecting.add_done_callback(_retrieve)
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Protocol:
        host, port = (self.host, self.port) if not self.sentinels else await self._discover()
        loop = asyncio.get_running_loop()
        sentinels = bool(self.sentinels)
        transport: asyncio.BaseTransport | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, protocol = await loop.create_connection(
                    lambda: _Protocol(drop_when_late=sentinels), host, port
                )
                setup = []
                if self.password is not None:
                    credentials = [self.username.encode()] if self.username else []
                    setup.append(
                        protocol.send(_command(b"AUTH", *credentials, self.password.encode()))
                    )
                if self.db:
                    setup.append(protocol.send(_command(b"SELECT", str(self.db).encode())))
                # The sentinels may name a primary that is one no more (or not yet).
                role = protocol.send(_command(b"ROLE")) if self.sentinels else None
                for reply in setup:
                    await reply
                if role is not None and not _is_primary(await role):
                    raise RedisConnectionError(
                        f"Redis at {host}:{port}, named by the sentinels as the primary of "
                        f"{self.master}, is not a primary"
                    )
        except (OSError, TimeoutError, RedisError) as exc:
            if transport is not None:  # a silent server, a refused AUTH or SELECT...
                transport.close()
            if isinstance(exc, RedisError):
                raise
            raise RedisConnectionError(f"cannot connect to Redis at {host}:{port}: {exc}") from exc
        self._protocol = protocol
        return protocol

    async def _discover(self) -> tuple[str, int]:
        """The primary's address, from the first sentinel that knows it. Each is given a
        share of the connection timeout, the primary's connection one more."""
        timeout = self.connect_timeout / (len(self.sentinels) + 1)
        problems = []
        for host, port in self.sentinels:
            try:
                async with asyncio.timeout(timeout):
                    address = await self._ask_sentinel(host, port)
            except (OSError, TimeoutError, RedisError) as exc:
                problems.append(f"{host}:{port}: {exc or type(exc).__name__}")
                continue
            if address is not None:
                return address
            problems.append(f"{host}:{port} names no primary for {self.master}")
        raise RedisConnectionError(f"no sentinel named the primary: {'; '.join(problems)}")

    async def _ask_sentinel(self, host: str, port: int) -> tuple[str, int] | None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_connection(_Protocol, host, port)
        try:
            password = self.sentinel_password
            auth = protocol.send(_command(b"AUTH", password.encode())) if password else None
            asked = protocol.send(
                _command(b"SENTINEL", b"get-master-addr-by-name", self.master.encode())
            )
            if auth is not None:
                await auth
            address = await asked
        finally:
            transport.close()
        match address:  # nil when the sentinel does not monitor that master
            case [bytes(primary_host), bytes(primary_port)] if primary_port.isdigit():
                return primary_host.decode(), int(primary_port)
        return None

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


def _is_primary(role: object) -> bool:
    return isinstance(role, list) and bool(role) and role[0] == b"master"


def online_replicas(info: str) -> int:
    """The replicas in sync (``state=online``) in an ``INFO replication`` reply: those that
    acknowledge writes; one still loading the primary's data does not yet."""
    return sum(
        1
        for line in info.splitlines()
        if line.startswith("slave") and ":" in line and "state=online" in line.split(",")
    )
