"""The controller's metrics and its health endpoints, for Prometheus and the kubelet's probes.

Takes an address (`--metrics-bind-address`, `host:port`; `0` turns it off) and two questions
(is the controller alive, is it ready); gives `Metrics`, the controller's counters in their own
prometheus_client registry, and `HealthServer`, a small HTTP server on a thread answering
`/healthz` (200 while the process runs its loop), `/readyz` (200 once it is connected and either
leads or follows; 503 before) and `/metrics` (the Prometheus text format).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from harvester.errors import ConfigError

PREFIX = "keruta_harvester_"


class _WatchCounts(Collector):
    """The watch's own counts (restarts, relists), read when Prometheus scrapes."""

    def __init__(self) -> None:
        self.source: Any = None  # a JobWatch, once the watch started

    def collect(self) -> Iterator[CounterMetricFamily]:
        restarts = CounterMetricFamily(
            PREFIX + "watch_restarts",
            "Watches started again: resumed after an error, or listed again after 410 Gone.",
        )
        relists = CounterMetricFamily(
            PREFIX + "watch_relists",
            "Lists made again after 410 Gone (the resourceVersion was compacted away).",
        )
        if self.source is not None:
            restarts.add_metric([], self.source.restarts + self.source.relists)
            relists.add_metric([], self.source.relists)
        yield restarts
        yield relists


class Metrics:
    """What the controller counts (see the names' help texts)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.jobs_seen = Counter(PREFIX + "jobs_seen", "Jobs decided about.", registry=registry)
        self.cleanup_jobs_created = Counter(
            PREFIX + "cleanup_jobs_created", "Cleanup Jobs created.", registry=registry
        )
        self.failed_jobs_skipped = Counter(
            PREFIX + "failed_jobs_skipped",
            "Main Jobs that failed and got no cleanup Job.",
            registry=registry,
        )
        self.cleanup_jobs_failed = Counter(
            PREFIX + "cleanup_jobs_failed",
            "Cleanup Jobs that failed for good (volume kept).",
            registry=registry,
        )
        self.completion_to_cleanup = Histogram(
            PREFIX + "completion_to_cleanup_seconds",
            "From a main Job's completion to its cleanup Job's creation.",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 1800),
            registry=registry,
        )
        self.claims_stuck = Gauge(
            PREFIX + "claims_stuck_terminating",
            "Claims Terminating longer than --stuck-claim-after.",
            registry=registry,
        )
        self.leader = Gauge(
            PREFIX + "leader", "1 while this replica holds the lease.", registry=registry
        )
        self.watch = _WatchCounts()
        registry.register(self.watch)


def parse_address(text: str) -> tuple[str, int] | None:
    """`host:port` or `:port` → (host, port); `0` → None (off)."""
    if text.strip() == "0":
        return None
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ConfigError(
            f"--metrics-bind-address {text!r}: write host:port, :port, or 0 to turn it off"
        )
    return host.strip("[]") or "0.0.0.0", number  # noqa: S104 - in a pod, for the kubelet


class HealthServer:
    """`/healthz`, `/readyz` and `/metrics` on a daemon thread; `address` is where it listens."""

    def __init__(
        self, address: tuple[str, int], metrics: Metrics, ready: Callable[[], bool]
    ) -> None:
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/healthz":
                    self._answer(200, b"ok\n", "text/plain")
                elif self.path == "/readyz":
                    ok = ready()
                    self._answer(
                        200 if ok else 503, b"ok\n" if ok else b"not ready\n", "text/plain"
                    )
                elif self.path == "/metrics":
                    self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                else:
                    self._answer(404, b"not found\n", "text/plain")

            def _answer(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would drown the decisions in the log

        try:
            self._server = ThreadingHTTPServer(address, Handler)
        except OSError as exc:
            raise ConfigError(
                f"--metrics-bind-address {address[0]}:{address[1]}: cannot listen there "
                f"({exc.strerror or exc})"
            ) from None
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.address = f"{host!s}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-server", daemon=True
        )

    def __enter__(self) -> HealthServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
