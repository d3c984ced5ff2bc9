"""Start a worker process: one Celery consumer, its model cache, and its advertisement in Redis.

The caller (`speechq worker`) has already set CUDA_VISIBLE_DEVICES; nothing here runs before that.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from functools import partial

from celery.signals import worker_shutting_down
from redis.exceptions import RedisError

from config import Settings
from config.redis_urls import sync_client
from contract.catalog import Registry, use_registry
from contract.errors import EngineStalled
from contract.jobs import JobRecord
from contract.results import JobResult
from jobstore import keys
from jobstore.adverts import WorkerInfo, advertise, withdraw
from tasks.celery_app import create_celery
from workers.celery_tasks import JobHandler, JobRunner, register_tasks
from workers.context import JobContext
from workers.dialogue import run_dialogue_job
from workers.drain import Drain
from workers.execution import WorkerStore
from workers.handlers import run_llm_job, run_stt_job, run_tts_job
from workers.metrics import WorkerMetrics
from workers.models import ModelCache
from workers.reaper import Reaper
from workers.stages import Stages
from workers.startup import RESTART_EXIT_CODE

log = logging.getLogger(__name__)
ADMIT_SECONDS = 1.0  # how often the heartbeat admits waiting jobs to free slots


class Heartbeat(threading.Thread):
    """Keeps this worker's advertisement (queues, device, loaded models) and the slots it offers the scheduler
    fresh until it stops, and every second admits waiting jobs to its queues' free slots (they are admitted as
    jobs are created and end, too; this catches up on what those missed).

    It also carries out a drain (`workers/drain.py`): one asked for through the API (`keys.drain`) is noticed
    here within a second; from then on the worker offers no slots, says `draining`, and `stop_consuming`
    is called (SIGTERM's drain needs no such call: Celery's warm shutdown stops consuming by itself)."""

    def __init__(
        self,
        store: WorkerStore,
        info: WorkerInfo,
        models: ModelCache,
        interval: float,
        slots: dict[str, int],
        stop_consuming: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(name="speechq-heartbeat", daemon=True)
        self.store, self.info, self.models, self.interval, self.slots = store, info, models, interval, slots
        self.stop_consuming = stop_consuming
        self.stopped = threading.Event()
        self.wake = threading.Event()  # set to act on a drain at once
        self._withdrawn = False

    def run(self) -> None:
        advertised = 0.0
        while not self.stopped.is_set():
            now = time.time()
            try:
                self._follow_drain()
                if now - advertised >= self.interval or self.info.draining != self._withdrawn:
                    self.info.models = self.models.loaded
                    self.info.heartbeat_at = now
                    self.info.draining = self._withdrawn
                    advertise(self.store.redis, self.info, ttl=self.interval * 3)
                    advertised = now
                if not self._withdrawn:
                    self.store.offer(self.info.id, self.slots, expires=now + self.interval * 3)
            except Exception as exc:  # noqa: BLE001 - Redis away, or anything: a stopped heartbeat hides a live worker
                log.warning("heartbeat failed: %s", exc)
            self.wake.wait(min(ADMIT_SECONDS, self.interval))
            self.wake.clear()

    def _follow_drain(self) -> None:
        drain = self.store.drain
        if not drain.draining and self.store.redis.exists(keys.drain(self.info.id)):
            if drain.begin():
                log.warning("draining, as asked through the API: taking no more jobs")
                self.stop_consuming()
        if drain.draining and not self._withdrawn:
            admitted = self.store.withdraw(self.info.id, self.info.queues)
            self._withdrawn = True
            log.info("slots withdrawn; %d waiting job(s) admitted for other workers", admitted)

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()
        try:
            withdraw(self.store.redis, self.info.id)
            self.store.offer(self.info.id, dict.fromkeys(self.slots, 0), expires=0.0)
        except RedisError as exc:  # the advertisement expires on its own
            log.warning("could not withdraw worker advertisement: %s", exc)


def offered_slots(settings: Settings, queues: list[str], concurrency: int) -> dict[str, int]:
    """Jobs of each queue this worker runs at once, which the scheduler keeps it supplied with: a generation
    per batch slot, STT_PARALLEL transcriptions (decoded together), one synthesis, a dialogue per thread of a
    dialogue worker."""
    per_queue = {"llm": settings.llm_parallel, "stt": settings.stt_parallel, "tts": 1, "dialogue": concurrency}
    return {queue: per_queue[queue] for queue in queues}


def restart_when_stalled(handler: JobHandler, stalled: threading.Event) -> JobHandler:
    """The handler, but an engine that stopped making progress also asks this worker to shut down (its
    job fails as `engine_stalled` first): a worker that cannot stop a runaway engine restarts."""

    def run(job: JobRecord, execution: JobContext) -> JobResult:
        try:
            return handler(job, execution)
        except EngineStalled:
            if not stalled.is_set():
                stalled.set()
                log.error("job %s: the engine is stuck; shutting this worker down to restart it", job.id)
                os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown: the other jobs end first
            raise

    return run


def _warn_if_oversubscribed(settings: Settings) -> None:
    """More threads than cores only makes every thread wait: say so once, at start."""
    cores = os.cpu_count() or 1
    for name, threads in (
        ("LLM_N_THREADS", settings.llm_n_threads),
        ("STT_N_THREADS", settings.stt_n_threads),
        ("TTS_N_THREADS", settings.tts_n_threads),
    ):
        if threads is not None and threads > cores:
            log.warning(
                "%s=%d asks for more threads than this machine's %d cores; they will contend", name, threads, cores
            )


def _serve_metrics(settings: Settings, metrics: WorkerMetrics, drain: Drain) -> None:
    if not settings.worker_metrics_port:
        return
    try:
        metrics.serve(settings.worker_metrics_port, settings.worker_metrics_host, ready=lambda: not drain.draining)
        log.info("metrics on %s:%d/metrics", settings.worker_metrics_host, settings.worker_metrics_port)
    except OSError as exc:  # another worker on this host has the port: work on, without metrics
        log.error("WORKER_METRICS_PORT %d: %s; this worker serves no metrics", settings.worker_metrics_port, exc)


def _preload(models: ModelCache, settings: Settings, queues: list[str]) -> None:
    """Load the default models of the queues served, and keep them: the first job does not wait for them."""
    preload = (
        (models.llm, "llm" in queues and settings.llm_preload),
        (models.stt, "stt" in queues and settings.stt_preload),
        (models.tts, "tts" in queues and settings.tts_preload and settings.tts_model != "openaudio-s1-mini"),
    )
    for model, wanted in preload:
        if wanted:
            with model():
                pass


def run_worker(settings: Settings, queues: list[str], *, concurrency: int = 1, device: str | None = None) -> None:
    if settings.redis_url is None:
        raise RuntimeError("REDIS_URL must be set for a worker")
    use_registry(Registry.load(settings))
    _warn_if_oversubscribed(settings)
    hostname = socket.gethostname()
    # Opaque: job records and events name it to clients; host and pid stay in the logs and Flower.
    worker_id = f"worker_{secrets.token_hex(6)}"
    redis = sync_client(settings.redis_url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30)
    drain = Drain(settings.worker_drain_seconds)
    store = WorkerStore(
        redis,
        raw=sync_client(settings.redis_url, socket_connect_timeout=5),  # bytes: job inputs and outputs
        ttl=settings.job_ttl_seconds,
        lease=settings.job_lease_seconds,
        max_attempts=settings.job_max_attempts,
        drain=drain,
    )
    metrics = WorkerMetrics()
    _serve_metrics(settings, metrics, drain)
    models = ModelCache(settings, on_load=metrics.model_loaded)

    app = create_celery(settings)
    stalled = threading.Event()
    handlers: dict[str, JobHandler] = {
        "llm": restart_when_stalled(partial(run_llm_job, models=models), stalled),
        "stt": partial(run_stt_job, models=models, inputs=store.read_input),
        "tts": partial(run_tts_job, models=models, outputs=store.write_output),
    }
    if "dialogue" in queues:  # its stage store runs a loop thread and two connection pools of its own
        handlers["dialogue"] = partial(run_dialogue_job, stages=Stages(store, app, settings))
    # Jobs a model kind runs at once: a generation per batch slot, STT_PARALLEL transcriptions, one synthesis;
    # the dialogue queue only waits on the others.
    gates = {
        "llm": threading.Semaphore(settings.llm_parallel),
        "stt": threading.Semaphore(settings.stt_parallel),
        "tts": threading.Semaphore(1),
    }
    register_tasks(app, JobRunner(settings, store, worker_id, handlers, observer=metrics, gates=gates))

    _preload(models, settings, queues)
    info = WorkerInfo(
        id=worker_id,
        hostname=hostname,
        pid=os.getpid(),
        queues=queues,
        device=device,
        started_at=time.time(),
        cuda_visible_devices=settings.cuda_visible_devices,
        metrics_port=settings.worker_metrics_port or None,
    )
    node = f"speechq-{'-'.join(queues)}{'-gpu' + device if device else ''}-{os.getpid()}@{hostname}"

    def stop_consuming() -> None:  # a drain asked through the API: the process stays, its consumers go
        for queue in queues:
            app.control.cancel_consumer(queue, destination=[node], reply=False)

    slots = offered_slots(settings, queues, concurrency)
    heartbeat = Heartbeat(store, info, models, settings.worker_heartbeat_seconds, slots, stop_consuming)
    heartbeat.start()

    @worker_shutting_down.connect(weak=False)
    def drain_on_shutdown(sig: str = "", **_: object) -> None:
        """SIGTERM (Celery's warm shutdown): drain, then exit once what runs has finished or been handed back."""
        if drain.begin():
            log.warning("%s: draining; running jobs have WORKER_DRAIN_SECONDS=%g to finish", sig, drain.seconds)
        heartbeat.wake.set()

    reaper = Reaper(redis, app, settings) if Reaper.applies(settings) else None
    if reaper is not None:
        reaper.start()
    where = f"cuda:{device}" if device else "cpu"
    log.info("worker %s (%s pid %d) serving queues %s on %s", worker_id, hostname, os.getpid(), ",".join(queues), where)
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
        if reaper is not None:
            reaper.stop()
        if stalled.is_set():
            # A thread stuck in native code cannot be stopped or joined: leave at once, and let the
            # supervisor start a fresh process (the stuck jobs have been failed and acknowledged).
            log.error("exiting with status %d so that a fresh worker replaces this one", RESTART_EXIT_CODE)
            logging.shutdown()
            os._exit(RESTART_EXIT_CODE)
