"""Prometheus metrics of one worker process, served on its own address (`WORKER_METRICS_HOST`, loopback
by default) and port (`WORKER_METRICS_PORT`), without auth.

Label values never come from a client as sent: kinds and statuses are enums, stages and error types are
checked against fixed sets (anything else is `other`), and model names are the engine's own, at most
MAX_MODEL_LABELS of them per process.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from contract.dialogue import DialogueResult
from contract.errors import error_classes
from contract.generation import GenerationResult
from contract.jobs import JobRecord, JobStatus
from contract.results import JobResult
from contract.transcription import TranscriptionResult

_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800)
OTHER = "other"
STAGES = frozenset({"queue", "total", "run", "first_token", "first_chunk", "decode"})
STATUSES = frozenset(JobStatus)
# Every `error.type` a job can end with: the codes of the failure tree, the Lua scripts' (`worker_lost`)
# and the dialogue stages' included.
ERROR_TYPES = frozenset(error_classes())
# Distinct model names one process labels before the rest count as `other`: a bound on the series even
# if a model name ever came from a request.
MAX_MODEL_LABELS = 32


def bounded(value: object, allowed: frozenset[str]) -> str:
    """`value` as a label if it is one of `allowed`, else `other`."""
    return value if isinstance(value, str) and value in allowed else OTHER


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.job_seconds = Histogram(
            "worker_job_duration_seconds",
            "Job time by kind and stage: queue (waiting for a worker), total (claim to finish), and the "
            "handler's own stages (first_token, first_chunk, decode, run)",
            ("kind", "stage"),
            buckets=_SECONDS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "worker_queue_wait_seconds",
            "From queued to claimed by this worker",
            ("kind",),
            buckets=_SECONDS,
            registry=r,
        )
        self.jobs = Counter("worker_jobs_total", "Jobs finished, by kind and status", ("kind", "status"), registry=r)
        self.failures = Counter(
            "worker_job_failures_total", "Failed jobs by kind and error type", ("kind", "type"), registry=r
        )
        self.tokens = Counter("worker_generated_tokens_total", "Tokens generated", ("model",), registry=r)
        self.tokens_per_second = Histogram(
            "worker_tokens_per_second",
            "Generation speed per job",
            ("model",),
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.audio_seconds = Counter(
            "worker_audio_seconds_total", "Audio transcribed (stt) or synthesized (tts)", ("kind", "model"), registry=r
        )
        self.real_time_factor = Histogram(
            "worker_real_time_factor",
            "Processing seconds per audio second, per job",
            ("kind", "model"),
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=r,
        )
        self.stt_batch_jobs = Histogram(
            "worker_stt_batch_jobs",
            "Transcriptions that shared a decoding step with each transcription (1: it decoded alone)",
            ("model",),
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.model_load_seconds = Gauge(
            "worker_model_load_seconds", "How long each loaded model took to load", ("model",), registry=r
        )
        self.models: set[str] = set()  # the model names labelled so far

    def serve(self, port: int, host: str, ready: Callable[[], bool] = lambda: True) -> None:
        """Serve `/metrics` (and any other path, as Prometheus' own server does), `/health` (200 while the
        process lives) and `/ready` (503 while `ready()` is false: the worker drains)."""
        metrics = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path not in ("/health", "/ready"):
                served: Iterable[bytes] = metrics(environ, start_response)
                return served
            status = "200 OK" if path == "/health" or ready() else "503 Service Unavailable"
            body = json.dumps({"status": "ok" if status.startswith("200") else "draining"}).encode()
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]

        server = make_server(host, port, app, _ThreadingServer, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="speechq-metrics", daemon=True).start()

    def model_label(self, name: object) -> str:
        """The model's name, while fewer than MAX_MODEL_LABELS names have been seen; then `other`."""
        label = str(name)[:128]
        if label not in self.models and len(self.models) >= MAX_MODEL_LABELS:
            return OTHER
        self.models.add(label)
        return label

    def model_loaded(self, name: str, seconds: float) -> None:
        self.model_load_seconds.labels(self.model_label(name)).set(seconds)

    def claimed(self, job: JobRecord) -> None:
        queued, started = job.times.get("queued_at"), job.times.get("started_at")
        if queued is not None and started is not None:
            wait = max(0.0, started - queued)
            self.queue_wait.labels(job.kind.value).observe(wait)
            self.job_seconds.labels(job.kind.value, "queue").observe(wait)

    def finished(
        self, job: JobRecord, status: str, result: JobResult | None, error: dict[str, Any] | None, seconds: float
    ) -> None:
        kind = job.kind.value
        self.jobs.labels(kind, bounded(status, STATUSES)).inc()
        self.job_seconds.labels(kind, "total").observe(seconds)
        if error is not None:
            self.failures.labels(kind, bounded(error.get("type", "internal_error"), ERROR_TYPES)).inc()
        if result is None:
            return
        timings = result.timings.model_dump()
        for name, value in timings.items():
            if name.endswith("seconds") and isinstance(value, int | float):
                stage = name.removesuffix("_seconds") if name != "seconds" else "run"
                self.job_seconds.labels(kind, bounded(stage, STAGES)).observe(value)
        # A dialogue names a model per stage (`models`); its own label is empty.
        model = self.model_label("" if isinstance(result, DialogueResult) else result.model)
        usage = result.usage if isinstance(result, GenerationResult | DialogueResult) else None
        if usage is not None and usage.completion_tokens:
            self.tokens.labels(model).inc(usage.completion_tokens)
            if isinstance(result, GenerationResult) and result.timings.tokens_per_second:
                self.tokens_per_second.labels(model).observe(result.timings.tokens_per_second)
        if isinstance(result, TranscriptionResult) and result.timings.batch_jobs:
            self.stt_batch_jobs.labels(model).observe(result.timings.batch_jobs)
        duration = None if isinstance(result, GenerationResult) else result.duration
        if duration is not None and duration > 0:
            self.audio_seconds.labels(kind, model).inc(duration)
            self.real_time_factor.labels(kind, model).observe(result.timings.seconds / duration)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""
