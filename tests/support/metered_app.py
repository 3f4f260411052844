"""A real HTTP application with live Prometheus metrics, for smoke tests and the verification
window (reusable by the deploy tests and benchmarks):

    GET  /api            answers per ``mode``: "healthy" 200, "errors" 500, "slow" 200 after
                         ``slow_ms``; every answer is counted in ``http_requests_total{status}``
                         and timed in ``http_request_duration_seconds``
    GET  /health         {"status": "healthy"} (500 {"status": "failing"} when ``health_ok`` is off)
    GET  /version        {"data": {"version": VERSION, "build": 42}, "items": [{"ok": true}]}
    POST /echo           201, the request body echoed back (``X-Api-Key`` must equal ``api_key``)
    GET  /private        200 {"status": "ok"} with ``X-Api-Key: api_key``, else 401
    GET  /leak           200, a body carrying ``api_key`` (to prove summaries never show it)
    GET  /metrics        the live Prometheus text (header ``X-Api-Key`` required when set;
                         ``switch_after_scrapes`` changes ``mode`` after the n-th)

``Traffic`` sends real requests to ``/api`` from a thread, as users would.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from tests.fixtures.http_targets import _AppHandler, _serve

VERSION = "v3"


@dataclass
class MeteredApp:
    url: str
    api_key: str
    mode: str = "healthy"
    slow_ms: int = 80
    health_ok: bool = True
    metrics_key_required: bool = False
    switch_after_scrapes: tuple[int, str] | None = None
    """(n, mode): after the n-th /metrics answer the app turns to ``mode`` (a deploy going
    bad mid-window, at a point of the window that does not depend on the machine's speed)."""
    scrapes: int = 0
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter("http_requests", "requests", ["status"], registry=self.registry)
        self.latency = Histogram(
            "http_request_duration_seconds",
            "latency",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )

    def restart(self) -> None:
        """What an application restart does to its metrics: every counter back to zero."""
        self.registry = CollectorRegistry()
        self.__post_init__()


def _handler(app: MeteredApp) -> type[BaseHTTPRequestHandler]:
    class Handler(_AppHandler):
        def _json(self, code: int, data: Any) -> None:
            self._send(code, json.dumps(data).encode())

        def _keyed(self) -> bool:
            return self.headers.get("X-Api-Key") == app.api_key

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/api":
                started = time.monotonic()
                code = 500 if app.mode == "errors" else 200
                if app.mode == "slow":
                    time.sleep(app.slow_ms / 1000)
                app.requests.labels(str(code)).inc()
                app.latency.observe(time.monotonic() - started)
                self._json(code, {"ok": code == 200})
            elif path == "/health":
                ok = app.health_ok
                self._json(200 if ok else 500, {"status": "healthy" if ok else "failing"})
            elif path == "/version":
                self._json(
                    200, {"data": {"version": VERSION, "build": 42}, "items": [{"ok": True}]}
                )
            elif path == "/private":
                self._json(
                    200 if self._keyed() else 401, {"status": "ok" if self._keyed() else "no"}
                )
            elif path == "/leak":
                self._json(200, {"debug": f"token={app.api_key}", "version": "v1"})
            elif path == "/metrics":
                if app.metrics_key_required and not self._keyed():
                    self._json(401, {"error": "no key"})
                else:
                    self._send(200, generate_latest(app.registry), "text/plain; version=0.0.4")
                    app.scrapes += 1
                    if app.switch_after_scrapes and app.scrapes == app.switch_after_scrapes[0]:
                        app.mode = app.switch_after_scrapes[1]
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if self.path == "/echo" and self._keyed():
                self._send(201, body, self.headers.get("Content-Type") or "text/plain")
            elif self.path == "/echo":
                self._json(401, {"error": "no key"})
            else:
                self._json(404, {"error": "not found"})

    return Handler


@contextmanager
def metered_app(api_key: str) -> Iterator[MeteredApp]:
    """Serve a ``MeteredApp`` on 127.0.0.1:<free port> for the block, then stop it."""
    app = MeteredApp("", api_key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(app))
    app.url = f"http://127.0.0.1:{server.server_address[1]}"
    stop = _serve(server)
    try:
        yield app
    finally:
        stop()


class Traffic:
    """Real GETs of ``/api`` every ``pause`` seconds from a thread, until stopped."""

    def __init__(self, app: MeteredApp, pause: float = 0.01) -> None:
        self.app = app
        self.pause = pause
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                client.get(f"{self.app.url}/api")
                self.sent += 1
                self._stop.wait(self.pause)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
