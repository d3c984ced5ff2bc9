"""The Celery tasks. Each is thin: claim the job, hand it to a plain handler, record how it ended,
then tell Celery (and so Flower) the same ending.

Handlers are passed in by the worker (`workers.main`), so this module never imports model code.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from celery import Celery, Task
from celery.exceptions import Ignore, Reject
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config import Settings
from config.logs import log_context
from contract.errors import JobError, JobTimedOut, internal_error_message
from contract.jobs import JobRecord, JobStatus
from contract.results import JobResult
from jobstore import keys
from tasks.registry import TASKS
from workers.context import JobContext
from workers.drain import HandBack
from workers.execution import DeadlinePassed, JobCancelled, JobExecution, LeaseLost, WorkerStore

log = logging.getLogger(__name__)

JobHandler = Callable[[JobRecord, JobContext], JobResult]


class JobObserver(Protocol):
    """What a worker wants to know about its jobs (metrics); every call must be cheap and never raise."""

    def claimed(self, job: JobRecord) -> None: ...

    def finished(
        self, job: JobRecord, status: str, result: JobResult | None, error: dict[str, Any] | None, seconds: float
    ) -> None: ...


class JobFailed(Exception):
    """Raised by a task once its job's failure is recorded, so that Celery reports the task FAILURE and
    Flower shows `JobFailed('model_unavailable', '…')`. The message is still acknowledged (acks_late with
    `task_acks_on_failure_or_timeout`) and never retried: the job store has already ended the job."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(error_type, message)
        self.error_type = error_type
        self.message = message

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}"


# How a task's outcome (the job's final status, or why its message was skipped) is told to Celery.
REPORTED_FAILED = frozenset({"failed", "poison"})  # poison: the claim failed the job past JOB_MAX_ATTEMPTS
REPORTED_REVOKED = frozenset({"cancelled", "expired", "missing"})  # ended without running here, or gone from the store
# 'lost': another worker holds the job, and reports its end under the same task id (the job id).
# 'handed_back': this worker drains; the message goes back to the broker for another (`workers/drain.py`).
GATE_CHECK_SECONDS = 0.25  # how often a message waiting for its model's gate looks for a drain


class JobRunner:
    """Runs one delivered job message through claim → handler → finish."""

    def __init__(
        self,
        settings: Settings,
        store: WorkerStore,
        worker: str,
        handlers: Mapping[str, JobHandler],
        observer: JobObserver | None = None,
        gates: Mapping[str, threading.Semaphore] | None = None,
    ):
        self.settings = settings
        self.store = store
        self.worker = worker
        self.handlers = handlers
        self.observer = observer
        # One job at a time per model kind: a thread whose model is busy waits here, before claiming,
        # so its job stays `queued` (and cancellable as such) instead of `running` behind a lock.
        self.gates = gates or {}

    def __call__(self, task: Task[Any, Any], job_id: str, handler_key: str) -> str:
        # The API puts its request id in the message headers; every line logged for this job carries it.
        with log_context(job_id=job_id, request_id=getattr(task.request, "request_id", None)):
            drain = self.store.drain
            if drain.draining:
                return "handed_back"  # a message taken just before the drain: another worker runs it
            gate = self.gates.get(handler_key)
            if gate is None:
                return self._claim_and_run(task, job_id, handler_key)
            if not gate.acquire(blocking=False):
                # The model is busy. A job that already ended (cancelled while queued) is skipped by its
                # claim: no need to wait for the model first.
                if self.store.ended(job_id):
                    return self._claim_and_run(task, job_id, handler_key)
                while not gate.acquire(timeout=GATE_CHECK_SECONDS):
                    if drain.draining:
                        return "handed_back"
            try:
                return self._claim_and_run(task, job_id, handler_key)
            finally:
                gate.release()

    def _claim_and_run(self, task: Task[Any, Any], job_id: str, handler_key: str) -> str:
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
        with log_context(request_id=job.request_id, owner=job.owner):
            log.info("job %s (%s) attempt %d started", job_id, job.kind, claim.attempt)
            if self.observer is not None:
                self.observer.claimed(job)
            deadline = time.monotonic() + self.settings.task_time_limit_seconds
            started = time.perf_counter()
            with self.store.execution(job_id, self.worker, deadline) as run:
                status, result, error = self._run(job, run, self.handlers[handler_key])
            if self.observer is not None and status not in ("lost", "handed_back"):
                self.observer.finished(job, status, result, error, time.perf_counter() - started)
            return status

    def _run(
        self, job: JobRecord, run: JobExecution, handler: JobHandler
    ) -> tuple[str, JobResult | None, dict[str, Any] | None]:
        """Run the handler and record the outcome; returns (status, result, error)."""
        try:
            result = handler(job, run)
        except JobCancelled:
            return run.finish(JobStatus.cancelled), None, None
        except LeaseLost as exc:
            log.warning("job %s: %s; leaving it to the worker that holds it", job.id, exc)
            return "lost", None, None
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # The job store went away mid-job (a cut link, a restart): record nothing, since the record may be out
            # of reach, and give the message back; whoever receives it takes the job over once this worker's lease
            # has lapsed (the claim retries until then).
            log.warning("job %s: the job store is unreachable (%s); handing the job back", job.id, exc)
            return "handed_back", None, None
        except HandBack:
            status = run.hand_back()
            log.warning("job %s ran past WORKER_DRAIN_SECONDS of this worker's drain: %s", job.id, status)
            if status == "handed_back":
                return status, None, None
            return "lost", None, None  # it ended meanwhile, or is being cancelled: as it is recorded
        except DeadlinePassed:
            limit = self.settings.task_time_limit_seconds
            failure: JobError = JobTimedOut(f"the job ran longer than TASK_TIME_LIMIT_SECONDS={limit}")
        except JobError as exc:
            log.warning("job %s failed: %s: %s", job.id, exc.code, exc)
            failure = exc
        except Exception:
            # A bug: the job fails and the worker lives on. The exception's text and traceback go to the
            # log (with the job and request ids), never to the client.
            log.exception("job %s (request %s) failed unexpectedly", job.id, job.request_id)
            failure = JobError(internal_error_message(job.request_id, job.id))
        else:
            status = run.finish(JobStatus.succeeded, result=result)
            log.info("job %s %s", job.id, status)
            return status, result, None
        error = failure.as_record()
        return run.finish(JobStatus.failed, error=error), None, error

    def report(self, task: Task[Any, Any], job_id: str, status: str) -> str:
        """Tell Celery how the job ended, as its record says, without changing the record: a failed job
        raises `JobFailed` (FAILURE); a cancelled, expired or vanished one sends `task-revoked` and is
        ignored (REVOKED); a lost one is ignored, so that the worker holding it reports it; else SUCCESS.
        Ignored and failed messages are acknowledged all the same."""
        if status in REPORTED_FAILED:
            raise JobFailed(*self.recorded_error(job_id))
        if status in REPORTED_REVOKED:
            announce_revoked(task, expired=status == "expired")
            raise Ignore()
        if status == "lost":
            raise Ignore()
        if status == "handed_back":
            raise Reject("this worker is draining", requeue=True)  # on the broker again at once
        return status

    def recorded_error(self, job_id: str) -> tuple[str, str]:
        """The failed job's `error` {type, message} as its record has it (one read, on failures only)."""
        try:
            error = json.loads(self.store.redis.hget(keys.job(job_id), "error") or "{}")
        except (RedisError, ValueError) as exc:  # the failure is recorded; only Flower's view of it is poorer
            log.warning("could not read the error of failed job %s: %s", job_id, exc)
            error = {}
        return str(error.get("type") or "failed"), str(error.get("message") or "")


def announce_revoked(task: Task[Any, Any], *, expired: bool) -> None:
    """The `task-revoked` event Celery sends for a task revoked before it ran, sent for a job that ended
    without running to its end; monitoring only, so a broker hiccup here is logged, never raised."""
    try:
        task.send_event("task-revoked", terminated=False, signum=None, expired=expired)
    except Exception as exc:  # noqa: BLE001 - monitoring only: no error of any broker's client may fail the job
        log.warning("could not send task-revoked for job %s: %s", task.request.id, exc)


def register_tasks(app: Celery, runner: JobRunner) -> None:
    for spec in TASKS:  # one task per row of the registry; its handler is the one for its queue

        def body(task: Task[Any, Any], job_id: str, _key: str = spec.queue) -> str:
            return runner.report(task, job_id, runner(task, job_id, _key))

        # `throws`: a JobFailed is an expected ending, logged by Celery on one line without a traceback.
        app.task(name=spec.name, bind=True, max_retries=None, acks_late=True, throws=(JobFailed,))(body)
