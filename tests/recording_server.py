"""A real HTTP server on 127.0.0.1 that records the headers of every request it gets.

Each path answers a fixed :class:`Reply`; body bytes may come from a generator, so a reply
can be larger than memory would like (a gzip bomb) or stop being sent once the client gives
up (how far it got is recorded in ``sent``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from casefetch_tools.background_server import BackgroundServer


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Callable[[], Iterable[bytes]] = b""


class RecordingServer(BackgroundServer):
    def __init__(self) -> None:
        super().__init__()
        self.replies: dict[str, Reply] = {}
        self.requests: dict[str, list[dict[str, str]]] = {}
        self.sent: dict[str, int] = {}
        self.lock = threading.Lock()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/{path.lstrip('/')}"

    def add(self, path: str, reply: Reply, host: str = "127.0.0.1") -> str:
        self.replies["/" + path.lstrip("/")] = reply
        return self.url(path, host)

    def received(self, path: str) -> list[dict[str, str]]:
        """The headers of each request for ``path`` (lower-case names), and under
        ``:target`` the request target as sent (path and query)."""
        with self.lock:
            return list(self.requests.get("/" + path.lstrip("/"), []))

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0]
        with self.lock:
            self.requests.setdefault(path, []).append(
                {k.lower(): v for k, v in request.headers.items()} | {":target": request.path}
            )
        reply = self.replies.get(path, Reply(status=404))
        request.send_response(reply.status)
        for name, value in reply.headers.items():
            request.send_header(name, value)
        if isinstance(reply.body, bytes):
            request.send_header("Content-Length", str(len(reply.body)))
            request.end_headers()
            self._write(request, path, [reply.body])
            return
        request.send_header("Transfer-Encoding", "chunked")
        request.send_header("Connection", "close")
        request.close_connection = True
        request.end_headers()
        chunks = (f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in reply.body() if c)
        self._write(request, path, _then_end(chunks))

    def _write(self, request: BaseHTTPRequestHandler, path: str, parts: Iterable[bytes]) -> None:
        try:
            for part in parts:
                request.wfile.write(part)
                with self.lock:
                    self.sent[path] = self.sent.get(path, 0) + len(part)
            request.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return


def _then_end(chunks: Iterable[bytes]) -> Iterable[bytes]:
    yield from chunks
    yield b"0\r\n\r\n"
