"""Prometheus metrics of the API process and the ASGI middleware that records them."""

from __future__ import annotations

import time

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # The default collectors the original API exported (process_*, python_*): dashboards built on it.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        labels = ("method", "route", "status")
        self.requests = Counter("app_http_requests_total", "HTTP requests answered", labels, registry=self.registry)
        self.errors = Counter(
            "app_http_request_errors_total", "HTTP requests answered with 5xx", labels, registry=self.registry
        )
        self.duration = Histogram(
            "app_http_request_duration_seconds",
            "Time to answer an HTTP request (to the end of the body, streams included)",
            ("method", "route"),
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.jobs_created = Counter(
            "app_jobs_created_total", "Jobs accepted, by kind", ("kind",), registry=self.registry
        )
        self.jobs_abandoned = Counter(
            "app_jobs_abandoned_total",
            "Jobs cancelled because the client waiting for them went away (blocking and streaming routes), by kind",
            ("kind",),
            registry=self.registry,
        )
        self.realtime_sessions = Gauge(
            "app_realtime_sessions", "Realtime sessions open on this API process", registry=self.registry
        )
        self.realtime_turns = Counter(
            "app_realtime_turns_total",
            "Realtime responses, by how they ended: completed, cancelled (barge-in or the client), failed",
            ("status",),
            registry=self.registry,
        )
        self.realtime_first_audio = Histogram(
            "app_realtime_first_audio_seconds",
            "Realtime turns: from the end of the user's speech (server VAD) to the answer's first audio",
            buckets=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
            registry=self.registry,
        )
        self.rejections = Counter(
            "app_rate_limit_rejections_total",
            "Requests refused by a limit: key / ip (rate), quota (active jobs), queue (depth)",
            ("scope",),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "app_queue_depth",
            "Messages waiting in each queue (read at scrape time)",
            ("queue",),
            registry=self.registry,
        )
        self.jobs_waiting = Gauge(
            "app_jobs_waiting",
            "Jobs waiting to start per queue and service tier, wherever they wait: in the scheduler, or admitted "
            "and on the broker's list (tier `admitted`); the sum over tiers is what an autoscaler (KEDA) scales on",
            ("queue", "tier"),
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "app_webhook_deliveries_total",
            "Tries at delivering a webhook event, by outcome: delivered, retried (to be tried again), failed "
            "(given up: a 4xx, a refused address, or past WEBHOOK_RETRY_HOURS)",
            ("outcome",),
            registry=self.registry,
        )
        self.webhook_oldest_pending = Gauge(
            "app_webhook_oldest_pending_seconds",
            "Age of the oldest webhook event not yet delivered nor given up, 0 when none (read at scrape time)",
            registry=self.registry,
        )
        self.queue_jobs = Gauge(
            "app_queue_jobs",
            "Jobs per queue and state, read at scrape time: `waiting` in the scheduler, `admitted` (on the broker's "
            "list or taken by a worker that has not started them) and `running` on a worker that has not begun to "
            "drain. The sum is the work an autoscaler (KEDA) sizes a worker class by",
            ("queue", "state"),
            registry=self.registry,
        )
        self.queue_workers = Gauge(
            "app_queue_workers",
            "Live workers serving each queue (read at scrape time)",
            ("queue",),
            registry=self.registry,
        )


_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (never by raw path: ids are unbounded)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in _METHODS else "other"  # a client picks the method
            self.metrics.duration.labels(method, route).observe(time.perf_counter() - started)
            self.metrics.requests.labels(method, route, str(status)).inc()
            if status >= 500:
                self.metrics.errors.labels(method, route, str(status)).inc()
