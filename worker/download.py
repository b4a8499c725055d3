"""Fetching one file: streamed, hashed, checked, retried, written atomically.

Memory stays bounded by the chunk size whatever the file's size: bytes go from the socket
through the hash straight to the storage writer.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from worker.connections import Connections, Resolve, Response
from worker.errors import DownloadError, PermanentDownloadError, RetryableDownloadError
from worker.guard import AddressCheck, UrlGuard, address_check
from worker.settings import DownloadSettings
from worker.sniff import (
    SNIFF_BYTES,
    TAIL_BYTES,
    FileKind,
    FileType,
    accepts,
    looks_complete,
    sniff,
)
from worker.storage import Staged, Storage, commit_or_discard

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


class Fetcher:
    def __init__(self, settings: DownloadSettings, check: AddressCheck | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 resolve: Resolve | None = None) -> None:
        """``check`` decides which addresses may be connected to (by default what
        DOWNLOAD_ALLOW_PRIVATE_NETWORKS says); ``resolve`` turns a host name into addresses
        (by default the system's resolver)."""
        self.settings = settings
        self.guard = UrlGuard(settings)
        self.connections = Connections(check or address_check(settings),
                                       settings.timeout_seconds, resolve)
        self.sleep = sleep
        self._buffers = threading.local()

    def fetch(self, url: str, kind: FileKind, storage: Storage,
              key_for: Callable[[FileType], str]) -> FetchResult:
        """Download ``url`` into ``storage`` under ``key_for(type)``, retrying as allowed.

        Raises DownloadError (its ``attempts`` attribute set) when the file cannot be had.
        The pipeline uses :meth:`fetch_staged`, to note its intent before the rename.
        """
        result, staged = self.fetch_staged(url, kind, storage, key_for)
        commit_or_discard(staged)
        return result

    def fetch_staged(self, url: str, kind: FileKind, storage: Storage,
                     key_for: Callable[[FileType], str]) -> tuple[FetchResult, Staged]:
        """:meth:`fetch`, up to the file verified and written, but not yet under its name:
        the caller commits it (or discards it). Files committed together cost one round trip
        for their intents, and one fsync per folder."""
        attempts = 0
        while True:
            attempts += 1
            try:
                key, file_type, sha256, size, staged = self._attempt(url, kind, storage, key_for)
                return FetchResult(key, file_type, sha256, size, attempts), staged
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
            host = self.guard.check(url)  # first: it refuses a URL that does not parse
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

    def _attempt(self, url: str, kind: FileKind, storage: Storage,
                 key_for: Callable[[FileType], str]
                 ) -> tuple[str, FileType, str, int, Staged]:
        response = self._open(url)
        try:
            self._check_status(response, url)
            stored = self._stream(response, url, kind, storage, key_for)
        except BaseException:
            # Unread bytes may remain: this connection must not be reused.
            response.close()
            raise
        response.release()
        return stored

    def _check_status(self, response: Response, url: str) -> None:
        status = response.status
        if status in RETRYABLE_STATUS:
            retry_after = _retry_after(response.header("Retry-After"))
            raise RetryableDownloadError(f"HTTP {status}", url, retry_after=retry_after)
        if status != 200:
            raise PermanentDownloadError(f"HTTP {status}", url)
        length = response.header("Content-Length")
        if length and length.isdigit() and int(length) > self.settings.max_bytes:
            raise PermanentDownloadError(
                f"file of {length} bytes is over DOWNLOAD_MAX_BYTES ({self.settings.max_bytes})",
                url)

    def _stream(self, response: Response, url: str, kind: FileKind,
                storage: Storage, key_for: Callable[[FileType], str]
                ) -> tuple[str, FileType, str, int, Staged]:
        chunks = self._body(response, url)
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
        if file_type is None or not accepts(kind, file_type):
            found = file_type.content_type if file_type else "unrecognised content"
            wanted = "a PDF" if kind is FileKind.CASE_PDF else "an image"
            raise PermanentDownloadError(f"expected {wanted}, got {found}", url)
        key = key_for(file_type)
        digest = hashlib.sha256()
        size = 0
        tail = b""
        with storage.stage(key, cache=False) as staged:
            for chunk in _prepend(first, chunks):
                size += len(chunk)
                if size > self.settings.max_bytes:
                    raise PermanentDownloadError(
                        f"file is over DOWNLOAD_MAX_BYTES ({self.settings.max_bytes})", url)
                digest.update(chunk)
                staged.write(chunk)
                tail = (tail + chunk[-TAIL_BYTES:])[-TAIL_BYTES:]
            if not looks_complete(file_type, tail):
                raise RetryableDownloadError("body cut short: the file does not end", url)
        return key, file_type, digest.hexdigest(), size, staged

    def _body(self, response: Response, url: str) -> Iterator[bytes | memoryview]:
        """The response's body, decoded, chunk by chunk; each chunk is valid until the next
        is asked for (they are read into one buffer per thread, without a copy).

        A server that ignored ``Accept-Encoding: identity`` may send gzip or deflate: the
        body is inflated a bounded piece at a time, so a small bomb is stopped by
        DOWNLOAD_MAX_BYTES as it grows, never held whole.
        """
        encoding = (response.header("Content-Encoding") or "identity").strip().lower()
        chunks = self._raw_body(response, url)
        if encoding in {"", "identity"}:
            yield from chunks
        elif encoding in {"gzip", "x-gzip", "deflate"}:
            yield from _inflate(chunks, encoding, url)
        else:
            raise PermanentDownloadError(f"unsupported Content-Encoding {encoding!r}", url)

    def _raw_body(self, response: Response, url: str) -> Iterator[memoryview]:
        raw = response.raw
        buffer = self._buffer()
        expected = _content_length(response)
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
            raise RetryableDownloadError(
                f"body cut short: {received} of {expected} bytes", url)

    def _buffer(self) -> memoryview:
        buffer: memoryview | None = getattr(self._buffers, "buffer", None)
        if buffer is None:
            buffer = self._buffers.buffer = memoryview(bytearray(CHUNK_BYTES))
        return buffer


def _prepend(first: bytes | memoryview, rest: Iterator[bytes | memoryview]
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
                    zlib.MAX_WBITS | 16 if encoding != "deflate"
                    else zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            while data and not inflater.eof:
                out = inflater.decompress(data, CHUNK_BYTES)
                data = inflater.unconsumed_tail
                if out:
                    yield out
        if inflater is not None and not inflater.eof:
            # All input is consumed, so what is left is small. A stream that does not end
            # is a file that does not end either: the type's own end check refuses it.
            yield inflater.flush()
    except zlib.error as exc:
        raise RetryableDownloadError(f"body could not be decoded ({encoding}): {exc}",
                                     url) from exc


def _zlib_header(data: bytes) -> bool:
    return len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0


def _redirect_target(url: str, location: str) -> str:
    try:
        return urljoin(url, location)
    except ValueError as exc:  # e.g. an IPv6 literal without its closing bracket
        raise PermanentDownloadError(f"invalid URL: {exc}", location) from None


def _content_length(response: Response) -> int | None:
    if response.header("Transfer-Encoding"):
        return None  # chunked: http.client checks each chunk's length itself
    length = response.header("Content-Length") or ""
    return int(length) if length.isdigit() else None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
