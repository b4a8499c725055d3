"""A real HTTP file server on 127.0.0.1 that misbehaves on command.

Each path gets a :class:`Route`: the bytes to serve and a list of faults to play, one per
request, before serving normally. Every request is counted, so tests can assert how many
fetches a file cost.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote

from casefetch_tools.background_server import BackgroundServer


@dataclass
class Fault:
    """One misbehaviour: ``status`` to answer, or ``truncate`` to cut the body short.
    ``headers`` go with the status, or with the body (a Content-Length there replaces the
    true one)."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    truncate: int | None = None
    lie_length: int | None = None
    delay: float = 0.0
    #: Close the connection abruptly (RST) after this many body bytes.
    reset_after: int | None = None


@dataclass
class Route:
    data: bytes
    content_type: str = "application/octet-stream"
    faults: list[Fault] = field(default_factory=list)
    #: Fault played on every request, after ``faults`` run out (e.g. always 503).
    always: Fault | None = None
    redirect_to: str | None = None
    chunked: bool = False
    #: Neither Content-Length nor chunks: the body ends when the connection closes.
    unframed: bool = False
    #: Pause after each 64 KiB written: a slow host (or one that stalls mid-body).
    chunk_delay: float = 0.0
    #: A trickling host: after ``trickle[0]`` bytes at full speed, ``trickle[1]`` bytes at a
    #: time, ``trickle[2]`` seconds apart.
    trickle: tuple[int, int, float] | None = None


class FileServer(BackgroundServer):
    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.in_flight_paths: Counter[str] = Counter()
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def add(self, path: str, data: bytes, **kwargs: Any) -> str:
        self.routes["/" + path.lstrip("/")] = Route(data, **kwargs)
        return self.url(path)

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        path = _path(request)
        with self.lock:
            self.in_flight += 1
            self.in_flight_paths[path] += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._handle(request)
        finally:
            with self.lock:
                self.in_flight -= 1
                self.in_flight_paths[path] -= 1

    def _handle(self, request: BaseHTTPRequestHandler) -> None:  # noqa: C901
        path = _path(request)
        with self.lock:
            self.hits[path] += 1
            route = self.routes.get(path)
            fault = None
            if route is not None:
                fault = route.faults.pop(0) if route.faults else route.always
        if route is None:
            request.send_response(404)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        if route.redirect_to:
            request.send_response(302)
            request.send_header("Location", route.redirect_to)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.status is not None:
            request.send_response(fault.status)
            for name, value in fault.headers.items():
                request.send_header(name, value)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        data = route.data
        length = len(data)
        if fault is not None and fault.truncate is not None:
            data = data[: fault.truncate]
        if fault is not None and fault.lie_length is not None:
            length = fault.lie_length
        request.send_response(200)
        request.send_header("Content-Type", route.content_type)
        extra = fault.headers if fault is not None else {}
        for name, value in extra.items():
            request.send_header(name, value)
        if route.chunked:
            request.send_header("Transfer-Encoding", "chunked")
        elif not route.unframed and "Content-Length" not in extra:
            request.send_header("Content-Length", str(length))
        if (
            route.unframed
            or "Content-Length" in extra
            or (fault is not None and (fault.truncate is not None or fault.lie_length is not None))
        ):
            request.send_header("Connection", "close")
            request.close_connection = True
        request.end_headers()
        try:
            if fault is not None and fault.reset_after is not None:
                request.wfile.write(data[: fault.reset_after])
                request.wfile.flush()
                request.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                request.close_connection = True
                return
            if route.trickle:
                head, step, pause = route.trickle

                def send(part: bytes) -> None:
                    request.wfile.write(
                        f"{len(part):x}\r\n".encode() + part + b"\r\n" if route.chunked else part
                    )
                    request.wfile.flush()

                send(data[:head])
                for start in range(head, len(data), step):
                    time.sleep(pause)
                    send(data[start : start + step])
                if route.chunked:
                    request.wfile.write(b"0\r\n\r\n")
            elif route.chunk_delay:
                for start in range(0, len(data), 65536):
                    request.wfile.write(data[start : start + 65536])
                    request.wfile.flush()
                    time.sleep(route.chunk_delay)
            elif route.chunked:
                for start in range(0, len(data), 65536):
                    part = data[start : start + 65536]
                    request.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                if fault is None or fault.truncate is None:
                    request.wfile.write(b"0\r\n\r\n")
            else:
                request.wfile.write(data)
            request.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return
        if fault is None:
            with self.lock:
                self.served[path] += 1


def _path(request: BaseHTTPRequestHandler) -> str:
    """The path asked for, its UTF-8 escapes decoded: a route added as ``/été.pdf`` is found
    only by a client that escaped it as a browser does (``/%C3%A9t%C3%A9.pdf``)."""
    return unquote(request.path.split("?", 1)[0], errors="replace")
