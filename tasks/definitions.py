"""The Celery tasks. Each is thin: claim the job, hand it to a plain handler, record how it ended.

Handlers are passed in by the worker (`workers.main`), so this module never imports model code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery, Task

from config import Settings
from tasks.execution import JobCancelled, JobExecution, JobTimedOut, LeaseLost, WorkerStore
from tasks.jobs import JobRecord, JobStatus

log = logging.getLogger(__name__)

JobHandler = Callable[[JobRecord, JobExecution], dict[str, Any]]

# Task name -> the handler key the worker supplies; the queue is in the name (see celery_app.TASK_ROUTES).
TASK_NAMES = {"speechq.llm.generate": "llm", "speechq.stt.transcribe": "stt", "speechq.tts.synthesize": "tts"}


class JobRunner:
    """Runs one delivered job message through claim → handler → finish."""

    def __init__(self, settings: Settings, store: WorkerStore, worker: str, handlers: Mapping[str, JobHandler]):
        self.settings = settings
        self.store = store
        self.worker = worker
        self.handlers = handlers

    def __call__(self, task: Task[Any, Any], job_id: str, handler_key: str) -> str:
        claim = self.store.claim(job_id, self.worker)
        if not claim.run:
            if claim.reason == "busy":
                # A redelivered message while another worker still holds the lease: look again once it
                # would have expired, so a worker that died just now is noticed without a long wait.
                raise task.retry(countdown=self.settings.job_lease_seconds + 1, max_retries=None)
            log.info("job %s not run: %s", job_id, claim.reason)
            return claim.reason
        job = claim.job
        assert job is not None, "a claim to run carries the record"
        log.info("job %s (%s) attempt %d started", job_id, job.kind, claim.attempt)
        deadline = time.monotonic() + self.settings.task_time_limit_seconds
        with self.store.execution(job_id, self.worker, deadline) as run:
            return self._run(job, run, self.handlers[handler_key])

    def _run(self, job: JobRecord, run: JobExecution, handler: JobHandler) -> str:
        try:
            result = handler(job, run)
        except JobCancelled:
            return run.finish(JobStatus.cancelled)
        except LeaseLost as exc:
            log.warning("job %s: %s; leaving it to the worker that holds it", job.id, exc)
            return "lost"
        except JobTimedOut:
            limit = self.settings.task_time_limit_seconds
            error = {"type": "timeout", "message": f"the job ran longer than TASK_TIME_LIMIT_SECONDS={limit}"}
            return run.finish(JobStatus.failed, error=error)
        except Exception as exc:
            code = getattr(exc, "code", None)
            if not isinstance(code, str):
                log.exception("job %s failed unexpectedly", job.id)
                code = "internal_error"
            else:
                log.warning("job %s failed: %s: %s", job.id, code, exc)
            return run.finish(JobStatus.failed, error={"type": code, "message": str(exc) or type(exc).__name__})
        status = run.finish(JobStatus.succeeded, result=result)
        log.info("job %s %s", job.id, status)
        return status


def register_tasks(app: Celery, runner: JobRunner) -> None:
    for name, handler_key in TASK_NAMES.items():

        def body(task: Task[Any, Any], job_id: str, _key: str = handler_key) -> str:
            return runner(task, job_id, _key)

        app.task(name=name, bind=True, max_retries=None, acks_late=True)(body)
