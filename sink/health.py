"""HTTP endpoints on the metrics port: ``/metrics``, ``/healthz`` (liveness), ``/readyz``.

``/healthz`` answers 200 while the consume loop has turned within ``stall_after_s``; a stuck
loop (a hung database call, a deadlock) turns it 503 so Kubernetes restarts the pod.
``/readyz`` answers 200 only while partitions are assigned and PostgreSQL answered the last
write or probe; during an outage backoff it is 503.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sink import metrics


@dataclass(slots=True)
class HealthState:
    """Liveness and readiness facts, written by the consume loop, read by the HTTP thread."""

    stall_after_s: float = 60.0
    last_loop_monotonic: float = field(default_factory=time.monotonic)
    assigned_partitions: int = 0
    database_ok: bool = False
    stopping: bool = False

    def beat(self) -> None:
        self.last_loop_monotonic = time.monotonic()

    def alive(self) -> tuple[bool, str]:
        age = time.monotonic() - self.last_loop_monotonic
        if age > self.stall_after_s:
            return False, f"consume loop has not turned for {age:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "shutting down"
        if not self.database_ok:
            return False, "PostgreSQL is not reachable (backing off)"
        if self.assigned_partitions == 0:
            return False, "no partitions assigned"
        return True, "ok"


def _handler(state: HealthState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                metrics.READY.set(1 if state.ready()[0] else 0)
                self._send(200, generate_latest(metrics.REGISTRY), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, why = state.alive() if path == "/healthz" else state.ready()
                self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds would flood the log

    return Handler


class HealthServer:
    """Serves the endpoints from a daemon thread. ``port=0`` picks a free port."""

    def __init__(self, state: HealthState, port: int, host: str = "0.0.0.0") -> None:
        self._server = ThreadingHTTPServer((host, port), _handler(state))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="asset-sink-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
