"""The compose test's file host: serves /srv/files inside the stack, slowly on request.

``GET /NAME?rate=N`` sends NAME at about N bytes per second (a long download to kill a
worker in the middle of); ``GET /_status`` answers the downloads in flight and a log of
every request, so the test on the host can see which container is fetching what.
Standard library only: it runs in the project's image with this file bind-mounted.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path("/srv/files")
LOCK = threading.Lock()
IN_FLIGHT: dict[int, dict[str, object]] = {}
LOG: list[dict[str, object]] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/_status":
            with LOCK:
                body = json.dumps({"inFlight": list(IN_FLIGHT.values()), "log": LOG}).encode()
            self._answer(200, body, "application/json")
            return
        path = (ROOT / url.path.lstrip("/")).resolve()
        if not path.is_relative_to(ROOT) or not path.is_file():
            self._answer(404, b"not found", "text/plain")
            return
        rate = int(parse_qs(url.query).get("rate", ["0"])[0])
        self._send_file(url.path, path.read_bytes(), rate)

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_file(self, name: str, data: bytes, rate: int) -> None:
        entry: dict[str, object] = {
            "path": name,
            "client": self.client_address[0],
            "start": time.time(),
            "end": None,
            "whole": False,
        }
        with LOCK:
            IN_FLIGHT[id(entry)] = entry
            LOG.append(entry)
        try:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            step = max(rate // 10, 1) if rate else len(data)
            for start in range(0, len(data), step):
                self.wfile.write(data[start : start + step])
                self.wfile.flush()
                if rate:
                    time.sleep(0.1)
            entry["whole"] = True
        except OSError:
            self.close_connection = True
        finally:
            entry["end"] = time.time()
            with LOCK:
                IN_FLIGHT.pop(id(entry), None)


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
