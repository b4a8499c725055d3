"""A threaded HTTP/1.1 server in a background thread: the demo's file host, and the tests'."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, no access log, no Nagle delay."""

    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes: with Nagle's algorithm on, a small body
    # waits for the client's delayed ACK of the headers (40 ms on Linux). Real file hosts
    # do not do that to their clients.
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:
        pass


class BackgroundServer:
    """Serves GET requests with :meth:`handle` (each on its own thread) until :meth:`stop`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, name: str | None = None) -> None:
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                server.handle(self)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                # A client hanging up mid-transfer is no error of the server's.
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self.httpd = Server((host, port), Handler)  # OSError if the address is taken
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=name, daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError
