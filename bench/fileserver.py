"""A fast file host for the benchmarks: generated PDFs and images, served from memory.

``GET /<anything>.<pdf|jpg|png>?size=N`` answers a valid file of exactly N bytes (PDF from
``%PDF-`` to ``%%EOF``, JPEG from SOI to EOI, PNG ending in IEND). Files up to 64 MiB are built
once and kept; larger ones are streamed from one repeated 1 MiB block, so a 1 GiB PDF costs no
more memory than a small one. curl and the workers fetch from this same server.

Run as ``python -m bench.fileserver --port P``.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from casefetch_tools.background_server import QuietHandler
from casefetch_tools.samples import filler, head_and_tail, padded

BLOCK = 1024 * 1024
CACHE_LIMIT = 64 * 1024 * 1024
CONTENT_TYPES = {"pdf": "application/pdf", "jpg": "image/jpeg", "png": "image/png"}


@functools.lru_cache(maxsize=64)
def whole(kind: str, size: int) -> bytes:
    return padded(kind, size)


def stream(kind: str, size: int) -> Iterator[bytes | memoryview]:
    """A file of ``size`` bytes, block by block: memory stays at one block."""
    head, tail = head_and_tail(kind)
    yield head
    left = size - len(head) - len(tail)
    block = memoryview(filler(BLOCK))
    while left > 0:
        part = block[: min(left, BLOCK)]
        yield part
        left -= len(part)
    yield tail


class Handler(QuietHandler):
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/ok":
            self._answer(200, b"ok", "text/plain")
            return
        kind = url.path.rsplit(".", 1)[-1]
        sizes = parse_qs(url.query).get("size", [])
        if kind not in CONTENT_TYPES or not sizes or not sizes[0].isdigit():
            self._answer(404, b"", "text/plain")
            return
        size = int(sizes[0])
        head, tail = head_and_tail(kind)
        size = max(size, len(head) + len(tail))
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPES[kind])
        self.send_header("Content-Length", str(size))
        self.end_headers()
        try:
            if size <= CACHE_LIMIT:
                self.wfile.write(whole(kind, size))
            else:
                for part in stream(kind, size):
                    self.wfile.write(part)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _answer(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def url(base: str, name: str, kind: str, size: int) -> str:
    return f"{base}/{name}.{kind}?size={size}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    Server(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
