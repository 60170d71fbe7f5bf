"""Prometheus metrics of the service (prometheus-client, one registry per app): requests and errors by endpoint,
method and status, latency histograms per endpoint, the worker pools' queue depth, and the served index's size
and version.  Endpoints are the route templates (unknown paths count as "other", so labels stay bounded)."""
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServiceMetrics:
    def __init__(self, live, pools):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ernievil2_http_requests", "HTTP requests answered", ["endpoint", "method", "status"],
                                registry=r)
        self.errors = Counter("ernievil2_http_errors", "HTTP requests answered with a 4xx or 5xx status",
                              ["endpoint", "status"], registry=r)
        self.latency = Histogram("ernievil2_http_request_seconds", "Time from request to the end of the answer",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        depth = Gauge("ernievil2_queue_depth", "Calls admitted to a worker pool and not finished (running + "
                                               "waiting)", ["pool"], registry=r)
        capacity = Gauge("ernievil2_queue_capacity", "Calls a worker pool admits at once", ["pool"], registry=r)
        for pool in pools:
            depth.labels(pool.name).set_function(lambda pool=pool: pool.depth)
            capacity.labels(pool.name).set(pool.capacity)
        Gauge("ernievil2_index_items", "Vectors in the served index", registry=r).set_function(
            lambda: live.current.index.count)
        Gauge("ernievil2_index_version", "The served index's manifest version (0 when it records none)",
              registry=r).set_function(lambda: live.current.version or 0)
        Gauge("ernievil2_index_reloads", "Times the index was swapped for a newer one since the start",
              registry=r).set_function(lambda: live.reloads)

    def exposition(self):
        """(body, content type) of the metrics page."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Times and counts every HTTP request, including the ones the guards refuse before routing."""

    def __init__(self, app, metrics, paths):
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def watched_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or (scope["path"] if scope["path"] in self.paths else "other")
            code = str(status[0])
            self.metrics.requests.labels(endpoint, scope["method"], code).inc()
            if status[0] >= 400:
                self.metrics.errors.labels(endpoint, code).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
