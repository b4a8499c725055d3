"""Fetching one file: streamed, hashed, checked, retried, written atomically.

Memory stays bounded by the chunk size whatever the file's size: bytes go from the socket
through the hash straight to the storage writer.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol
from urllib.parse import urljoin, urlsplit

from worker import headers as header_values
from worker.connections import Connections, Resolve, Response
from worker.deadline import Watch, Watchdog
from worker.errors import DownloadError, PermanentDownloadError, RetryableDownloadError
from worker.guard import AddressCheck, UrlGuard, address_check
from worker.settings import DownloadSettings
from worker.sniff import SNIFF_BYTES, FileKind, FileType, Refused, end_check, judge, sniff
from worker.storage import Staged, Storage
from worker.urls import InvalidUrl, request_url

#: Bytes read at once, into one buffer per thread: larger gains no throughput on a LAN and
#: fits the caches less well (the bytes go through the hash and the write while still in it).
CHUNK_BYTES = 256 * 1024
RETRYABLE_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "casefetch/0.1"


@dataclass(frozen=True)
class FetchResult:
    key: str
    file_type: FileType
    sha256: str
    size: int
    attempts: int
    #: Why the file is kept although it is not of the type expected (None: it is).
    warning: str | None = None


class FileFetcher(Protocol):
    """What the pipeline fetches with: a :class:`Fetcher`, or one wrapped (metrics)."""

    def fetch_staged(
        self,
        url: str,
        kind: FileKind,
        storage: Storage,
        key_for: Callable[[FileType], str],
        step_action: str | None = None,
        owner: str | None = None,
    ) -> tuple[FetchResult, Staged]: ...

    def close(self) -> None: ...


class Fetcher:
    def __init__(
        self,
        settings: DownloadSettings,
        check: AddressCheck | None = None,
        sleep: Callable[[float], None] = time.sleep,
        resolve: Resolve | None = None,
    ) -> None:
        """``check`` decides which addresses may be connected to (by default what
        DOWNLOAD_ALLOW_PRIVATE_NETWORKS says); ``resolve`` turns a host name into addresses
        (by default the system's resolver)."""
        self.settings = settings
        self.guard = UrlGuard(settings)
        self.connections = Connections(
            check or address_check(settings), settings.timeout_seconds, resolve
        )
        self.sleep = sleep
        self.watchdog = Watchdog()
        self._buffers = threading.local()

    def close(self) -> None:
        """Close every kept-alive connection, of every thread (no fetch may be under way)."""
        self.connections.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def fetch_staged(
        self,
        url: str,
        kind: FileKind,
        storage: Storage,
        key_for: Callable[[FileType], str],
        step_action: str | None = None,
        owner: str | None = None,
    ) -> tuple[FetchResult, Staged]:
        """Download ``url`` into ``storage`` under ``key_for(type)``, retrying as allowed, up to
        the file verified and written, but not yet under its name: the caller commits it (or
        discards it). Files committed together cost one round trip for their intents, and one
        fsync per folder. ``step_action`` is the item's (a VIDEO item may hold a video);
        ``owner``: see :meth:`Storage.stage`.

        Raises DownloadError (its ``attempts`` attribute set) when the file cannot be had."""
        attempts = 0
        while True:
            attempts += 1
            try:
                stored = self._attempt(url, _Slot(kind, step_action, owner), storage, key_for)
                return FetchResult(
                    stored.key,
                    stored.file_type,
                    stored.sha256,
                    stored.size,
                    attempts,
                    stored.warning,
                ), stored.staged
            except RetryableDownloadError as exc:
                if attempts >= self.settings.max_attempts:
                    exc.attempts = attempts  # type: ignore[attr-defined]
                    raise
                self.sleep(self._backoff(attempts, exc.retry_after))
            except DownloadError as exc:
                exc.attempts = attempts  # type: ignore[attr-defined]
                raise

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        cap = self.settings.backoff_max_seconds
        ceiling = min(cap, self.settings.backoff_base_seconds * 2 ** (attempt - 1))
        jittered = random.uniform(0, ceiling)
        if retry_after is not None:
            return min(cap, max(retry_after, jittered))
        return jittered

    def _open(self, url: str) -> Response:
        """GET ``url``, following redirects ourselves so every hop passes the guard.

        DOWNLOAD_HEADERS go only over https to a host named in DOWNLOAD_ALLOWED_HOSTS, the
        URL received as every redirect: an http URL is fetched without them.
        """
        for _ in range(self.settings.max_redirects + 1):
            try:
                url = request_url(url)  # what a browser would send: ASCII, IDNA host
            except InvalidUrl as exc:
                raise PermanentDownloadError(f"invalid URL: {exc}", url) from None
            host = self.guard.check(url)
            parts = urlsplit(url)
            headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
            if parts.scheme == "https" and host in self.settings.allowed_hosts:
                headers.update(self.settings.extra_headers)
            try:
                response = self.connections.get(parts, headers)
            except (OSError, http.client.HTTPException) as exc:
                raise RetryableDownloadError(f"network error: {_describe(exc)}", url) from exc
            location = response.header("Location")
            if response.status in REDIRECT_STATUS and location:
                response.drain()
                url = _redirect_target(url, location)
                continue
            return response
        raise PermanentDownloadError("too many redirects", url)

    def _attempt(
        self, url: str, slot: _Slot, storage: Storage, key_for: Callable[[FileType], str]
    ) -> _Stored:
        # One try, from its request to its last byte, within DOWNLOAD_ATTEMPT_TIMEOUT_SECONDS.
        deadline = time.monotonic() + self.settings.attempt_timeout_seconds
        response = self._open(url)
        try:
            with self.watchdog.watch(deadline, response.abort) as watch:
                if watch.deadline <= time.monotonic():
                    raise self._too_long(url)
                length = self._check_status(response, url)
                stored = self._stream(response, url, slot, storage, key_for, length, watch)
        except BaseException:
            # Unread bytes may remain: this connection must not be reused.
            response.close()
            raise
        response.release()
        return stored

    def _check_status(self, response: Response, url: str) -> int | None:
        """Refuse a response that is not the file; return the body's declared length (None:
        chunked, or the body ends when the connection closes)."""
        status = response.status
        if status in RETRYABLE_STATUS:
            retry_after = header_values.retry_after(response.header("Retry-After"))
            raise RetryableDownloadError(f"HTTP {status}", url, retry_after=retry_after)
        if status != 200:
            raise PermanentDownloadError(f"HTTP {status}", url)
        length = _content_length(response)
        if length == header_values.INVALID:
            raise RetryableDownloadError(
                f"protocol error: Content-Length {response.header('Content-Length')!r} "
                "is not a length",
                url,
            )
        if length is not None and length > self.settings.max_bytes:
            raise PermanentDownloadError(
                f"file of {length} bytes is over DOWNLOAD_MAX_BYTES ({self.settings.max_bytes})",
                url,
            )
        return length

    def _too_long(self, url: str) -> RetryableDownloadError:
        return RetryableDownloadError(
            f"timed out: the try took over DOWNLOAD_ATTEMPT_TIMEOUT_SECONDS "
            f"({self.settings.attempt_timeout_seconds:g} s)",
            url,
        )

    def _stream(
        self,
        response: Response,
        url: str,
        slot: _Slot,
        storage: Storage,
        key_for: Callable[[FileType], str],
        length: int | None,
        watch: Watch,
    ) -> _Stored:
        try:
            stored = self._stream_body(response, url, slot, storage, key_for, length)
        except DownloadError:
            if watch.expired:  # what the cut connection looked like is not the reason
                raise self._too_long(url) from None
            raise
        if watch.expired:  # cut just as the last bytes came: the try was over its time
            stored.staged.discard()
            raise self._too_long(url)
        return stored

    def _stream_body(
        self,
        response: Response,
        url: str,
        slot: _Slot,
        storage: Storage,
        key_for: Callable[[FileType], str],
        length: int | None,
    ) -> _Stored:
        chunks = self._body(response, url, length)
        first: bytes | memoryview = b""
        short = b""  # first reads under SNIFF_BYTES, copied: the next read reuses the buffer
        for chunk in chunks:
            if len(short) + len(chunk) >= SNIFF_BYTES:
                first = short + chunk if short else chunk
                break
            short += chunk
        else:
            first = short
        if not first:
            raise RetryableDownloadError("empty body", url)
        file_type = sniff(bytes(first[:SNIFF_BYTES]))
        try:
            warning = judge(slot.kind, file_type, slot.step_action)
        except Refused as exc:
            raise PermanentDownloadError(str(exc), url) from None
        assert file_type is not None  # judge refuses unrecognised content
        # Framing (Content-Length, chunks) says whether the body is whole; a body that ends
        # when the connection closes has only what its format tells (never its last bytes).
        framed = length is not None or response.raw.chunked
        ending = None if framed else end_check(file_type)
        key = key_for(file_type)
        digest = hashlib.sha256()
        size = 0
        with storage.stage(key, cache=False, owner=slot.owner) as staged:
            for chunk in _prepend(first, chunks):
                size += len(chunk)
                if size > self.settings.max_bytes:
                    raise PermanentDownloadError(
                        f"file is over DOWNLOAD_MAX_BYTES ({self.settings.max_bytes})", url
                    )
                digest.update(chunk)
                staged.write(chunk)
                if ending is not None:
                    ending.feed(chunk)
            if ending is not None and not ending.whole():
                raise RetryableDownloadError(
                    "body cut short: the connection closed before the file's end", url
                )
        return _Stored(key, file_type, digest.hexdigest(), size, staged, warning)

    def _body(
        self, response: Response, url: str, length: int | None
    ) -> Iterator[bytes | memoryview]:
        """The response's body, decoded, chunk by chunk; each chunk is valid until the next
        is asked for (they are read into one buffer per thread, without a copy).

        A server that ignored ``Accept-Encoding: identity`` may send gzip or deflate: the
        body is inflated a bounded piece at a time, so a small bomb is stopped by
        DOWNLOAD_MAX_BYTES as it grows, never held whole.
        """
        encoding = (response.header("Content-Encoding") or "identity").strip().lower()
        chunks = self._raw_body(response, url, length)
        if encoding in {"", "identity"}:
            yield from chunks
        elif encoding in {"gzip", "x-gzip", "deflate"}:
            yield from _inflate(chunks, encoding, url)
        else:
            raise PermanentDownloadError(f"unsupported Content-Encoding {encoding!r}", url)

    def _raw_body(self, response: Response, url: str, expected: int | None) -> Iterator[memoryview]:
        raw = response.raw
        buffer = self._buffer()
        received = 0
        while True:
            try:
                count = raw.readinto(buffer)
            except (OSError, http.client.HTTPException) as exc:
                raise RetryableDownloadError(f"network error: {_describe(exc)}", url) from exc
            if not count:
                break
            received += count
            yield buffer[:count]
        if expected is not None and received != expected:
            # http.client stops at Content-Length; fewer bytes mean the connection dropped.
            raise RetryableDownloadError(f"body cut short: {received} of {expected} bytes", url)

    def _buffer(self) -> memoryview:
        buffer: memoryview | None = getattr(self._buffers, "buffer", None)
        if buffer is None:
            buffer = self._buffers.buffer = memoryview(bytearray(CHUNK_BYTES))
        return buffer


@dataclass(frozen=True)
class _Slot:
    """What the file fetched is for: the case PDF, or an item's file (and its stepAction);
    ``owner``: whose heartbeat vouches for it while it is written (see Storage.stage)."""

    kind: FileKind
    step_action: str | None = None
    owner: str | None = None


@dataclass(frozen=True)
class _Stored:
    key: str
    file_type: FileType
    sha256: str
    size: int
    staged: Staged
    warning: str | None


def _prepend(
    first: bytes | memoryview, rest: Iterator[bytes | memoryview]
) -> Iterator[bytes | memoryview]:
    yield first
    yield from rest


def _inflate(chunks: Iterator[memoryview], encoding: str, url: str) -> Iterator[bytes]:
    """A gzip or deflate body, inflated at most CHUNK_BYTES at a time. "deflate" is meant to
    be zlib-wrapped; some servers send it raw, which its first two bytes tell."""
    inflater = None
    try:
        for chunk in chunks:
            data = bytes(chunk)
            if inflater is None:
                wrapped = encoding == "deflate" and _zlib_header(data)
                inflater = zlib.decompressobj(
                    zlib.MAX_WBITS | 16
                    if encoding != "deflate"
                    else zlib.MAX_WBITS
                    if wrapped
                    else -zlib.MAX_WBITS
                )
            while data and not inflater.eof:
                out = inflater.decompress(data, CHUNK_BYTES)
                data = inflater.unconsumed_tail
                if out:
                    yield out
        if inflater is not None and not inflater.eof:
            # The transfer was whole, but the compressed stream in it is not: the host
            # sent a cut file (retried).
            raise RetryableDownloadError(f"body cut short: the {encoding} stream does not end", url)
    except zlib.error as exc:
        raise RetryableDownloadError(f"body could not be decoded ({encoding}): {exc}", url) from exc


def _zlib_header(data: bytes) -> bool:
    return len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0


def _redirect_target(url: str, location: str) -> str:
    # http.client reads header bytes as Latin-1; a browser reads a Location as UTF-8.
    with contextlib.suppress(UnicodeError):
        location = location.encode("latin-1").decode("utf-8")
    try:
        return urljoin(url, location)
    except ValueError as exc:  # e.g. an IPv6 literal without its closing bracket
        raise PermanentDownloadError(f"invalid URL: {exc}", location) from None


def _content_length(response: Response) -> int | None:
    """The declared length (or headers.INVALID); None when chunked or not declared."""
    if response.header("Transfer-Encoding"):
        return None  # chunked: http.client checks each chunk's length itself
    return header_values.content_length(response.header("Content-Length"))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
