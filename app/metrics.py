"""Prometheus metrics of one app instance: HTTP requests by route and status, and storage readiness."""

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """One registry per app, so that tests may build several apps in one process."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("scv_http_requests_total", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("scv_http_request_seconds", "HTTP request latency", ["method", "route"],
                                 registry=self.registry)
        self.storage_ready = Gauge("scv_storage_ready", "1 when the last readiness check passed",
                                   registry=self.registry)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    def middleware(self, app):
        """ASGI middleware that records every HTTP request under its route template."""

        async def recorder(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            start, status = time.perf_counter(), 500

            async def capture(message):
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, capture)
            finally:
                route = getattr(scope.get("route"), "path", "unmatched")
                self.requests.labels(scope["method"], route, str(status)).inc()
                self.latency.labels(scope["method"], route).observe(time.perf_counter() - start)

        return recorder
