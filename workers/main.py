"""Start a worker process: one Celery consumer, its model cache, and its advertisement in Redis.

The caller (`speechq worker`) has already set CUDA_VISIBLE_DEVICES; nothing here runs before that.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from functools import partial

from redis import Redis

from config import Settings
from tasks.celery_app import create_celery
from tasks.definitions import JobRunner, register_tasks
from tasks.execution import WorkerStore
from tasks.registry import WorkerInfo, advertise, withdraw
from workers.dialogue import Stages, run_dialogue_job
from workers.handlers import run_llm_job, run_stt_job, run_tts_job
from workers.metrics import WorkerMetrics
from workers.models import ModelCache

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Keeps this worker's advertisement (queues, device, loaded models) fresh until it stops."""

    def __init__(self, redis: Redis, info: WorkerInfo, models: ModelCache, interval: float) -> None:
        super().__init__(name="speechq-heartbeat", daemon=True)
        self.redis, self.info, self.models, self.interval = redis, info, models, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.info.models = self.models.loaded
            try:
                advertise(self.redis, self.info, ttl=self.interval * 3)
            except Exception as exc:  # Redis away for a moment: say so and keep beating
                log.warning("heartbeat failed: %s", exc)
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()
        try:
            withdraw(self.redis, self.info.id)
        except Exception as exc:
            log.warning("could not withdraw worker advertisement: %s", exc)


def run_worker(settings: Settings, queues: list[str], *, concurrency: int = 1, device: str | None = None) -> None:
    if settings.redis_url is None:
        raise RuntimeError("REDIS_URL must be set for a worker")
    hostname = socket.gethostname()
    worker_id = f"{hostname}:{os.getpid()}"
    redis = Redis.from_url(
        settings.redis_url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30
    )
    store = WorkerStore(
        redis,
        raw=Redis.from_url(settings.redis_url, socket_connect_timeout=5),  # bytes: job inputs and outputs
        ttl=settings.job_ttl_seconds,
        lease=settings.job_lease_seconds,
        max_attempts=settings.job_max_attempts,
    )
    metrics = WorkerMetrics()
    if settings.worker_metrics_port:
        try:
            metrics.serve(settings.worker_metrics_port)
            log.info("metrics on :%d/metrics", settings.worker_metrics_port)
        except OSError as exc:  # another worker on this host has the port: work on, without metrics
            log.error("WORKER_METRICS_PORT %d: %s; this worker serves no metrics", settings.worker_metrics_port, exc)
    models = ModelCache(settings, on_load=metrics.model_loaded)

    app = create_celery(settings)
    handlers = {
        "llm": partial(run_llm_job, models=models),
        "stt": partial(run_stt_job, models=models, inputs=store.read_input),
        "tts": partial(run_tts_job, models=models, outputs=store.write_output),
        "dialogue": partial(run_dialogue_job, stages=Stages(store, app, settings)),
    }
    # Jobs a model kind runs at once: a generation per batch slot, one speech job per engine; the
    # dialogue queue only waits on the others.
    gates = {
        "llm": threading.Semaphore(settings.llm_parallel),
        "stt": threading.Semaphore(1),
        "tts": threading.Semaphore(1),
    }
    register_tasks(app, JobRunner(settings, store, worker_id, handlers, observer=metrics, gates=gates))

    if "llm" in queues and settings.llm_preload:
        models.llm()
    if "stt" in queues and settings.stt_preload:
        models.stt()
    if "tts" in queues and settings.tts_preload and settings.tts_model != "openaudio-s1-mini":
        models.tts()
    info = WorkerInfo(
        id=worker_id,
        hostname=hostname,
        pid=os.getpid(),
        queues=queues,
        device=device,
        started_at=time.time(),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        metrics_port=settings.worker_metrics_port or None,
    )
    heartbeat = Heartbeat(redis, info, models, settings.worker_heartbeat_seconds)
    heartbeat.start()
    node = f"speechq-{'-'.join(queues)}{'-gpu' + device if device else ''}-{os.getpid()}@{hostname}"
    log.info("worker %s serving queues %s on %s", worker_id, ",".join(queues), f"cuda:{device}" if device else "cpu")
    try:
        app.worker_main(
            [
                "worker",
                "--queues",
                ",".join(queues),
                "--pool",
                "threads",
                "--concurrency",
                str(concurrency),
                "--hostname",
                node,
                "--loglevel",
                settings.log_level,
                "--without-mingle",
            ]
        )
    finally:
        heartbeat.stop()
