"""50 slow HTTP targets: one threaded server on 127.0.0.1 that answers every GET after 200 ms.

tests/fixtures/http_targets.py has a ``/slow`` route, but its server keeps Python's default
listen backlog of 5: a burst of 32 connections can overflow it and cost a 1 s SYN retransmit
that would be measured as opsflow's. This server uses a backlog of 256.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DELAY_SECONDS = 0.2
BODY = b'{"status": "ok"}'


class _SlowHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep the table readable
        return

    def do_GET(self) -> None:
        time.sleep(DELAY_SECONDS)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)


class _Server(ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True


def start_slow_targets(count: int) -> tuple[list[str], Callable[[], None]]:
    """Serve ``count`` target URLs (``/target/<i>/health``); return (urls, stop)."""
    server = _Server(("127.0.0.1", 0), _SlowHandler)
    thread = threading.Thread(target=server.serve_forever, name="slow-targets", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return [f"{base}/target/{i:02d}/health" for i in range(count)], stop
