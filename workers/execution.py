"""`JobExecution`: the worker's side of a job — claim it, emit its events, keep its lease, finish it.

Handlers see only the `JobContext` protocol (`workers/context.py`), which `JobExecution` implements:
`emit(type, data)` raises `JobCancelled` once the owner has asked to stop, so a generation loop that emits
a token per step stops within a token or two.

Redis at its maxmemory (`noeviction`) refuses writes with an OOM error: an event or output then fails
the job with `insufficient_storage`, while claiming and finishing wait for room, so no job is left
`running` with nobody on it, nor its message acked unclaimed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from pydantic import BaseModel
from redis import Redis
from redis.exceptions import OutOfMemoryError, RedisError

from contract.errors import JobTimedOut, StorageFull
from contract.jobs import EventType, JobRecord, JobStatus
from jobstore import keys, scripts
from workers.drain import Drain, HandBack

log = logging.getLogger(__name__)
T = TypeVar("T")

# Claim outcomes after which the job's input is no longer needed ('busy': another worker has it).
ENDED = {"missing", "expired", "cancelled", "poison", "succeeded", "failed"}


class JobCancelled(Exception):
    """The job's owner cancelled it; the worker stops and records `cancelled`."""


class DeadlinePassed(JobTimedOut):
    """This job ran past its deadline (a stage's `JobTimedOut`, relayed by a dialogue, is not this)."""


class LeaseLost(Exception):
    """Another worker took the job over (this one was presumed dead); stop without recording anything."""


@dataclass(frozen=True, slots=True)
class Claim:
    run: bool
    reason: str  # 'run' or why not: 'missing', 'busy', 'cancelled', 'poison', or the job's status
    attempt: int = 0
    job: JobRecord | None = None  # the record as claimed, when `run`


class LeaseKeeper(threading.Thread):
    """One thread per worker renews the lease of every job this worker is running."""

    def __init__(self, store: WorkerStore) -> None:
        super().__init__(name="speechq-leases", daemon=True)
        self.store = store
        self.active: dict[str, str] = {}  # job id -> worker id
        self._lock = threading.Lock()

    def hold(self, job_id: str, worker: str) -> None:
        with self._lock:
            self.active[job_id] = worker
            if not self.is_alive():
                self.start()

    def release(self, job_id: str) -> None:
        with self._lock:
            self.active.pop(job_id, None)

    def run(self) -> None:
        while True:
            time.sleep(self.store.lease / 3)
            with self._lock:
                held = list(self.active.items())
            for job_id, worker in held:
                try:
                    status = self.store.scripts["renew"](
                        keys=[keys.job(job_id), keys.LEASES], args=[self.store.lease, worker, job_id]
                    )
                except Exception as exc:  # noqa: BLE001 - a Redis blip, or anything: this thread must live on,
                    # or every lease this worker holds lapses and its jobs are taken over
                    log.warning("could not renew the lease of %s: %s", job_id, exc)
                    continue
                if status not in (JobStatus.running, JobStatus.cancelling):
                    self.release(job_id)


class WorkerStore:
    """The worker's sync Redis clients (decoded, and `raw` for the bytes of job inputs and outputs)
    and its registered scripts."""

    def __init__(
        self,
        redis: Redis,
        *,
        ttl: int,
        lease: float,
        max_attempts: int,
        raw: Redis | None = None,
        drain: Drain | None = None,
    ) -> None:
        self.redis = redis
        self.raw = raw
        self.ttl = ttl
        self.lease = lease
        self.max_attempts = max_attempts
        self.drain = drain or Drain(float("inf"))
        self.scripts = {name: redis.register_script(scripts.source(name)) for name in scripts.WORKER_SIDE}
        self.leases = LeaseKeeper(self)

    def ended(self, job_id: str) -> str | None:
        """The job's status if it already ended (cancelled while queued, expired), else None: one read,
        so a message that only has to be skipped never waits behind a busy model."""
        status = self.redis.hget(keys.job(job_id), "status")
        return status if status in ENDED else None

    def claim(self, job_id: str, worker: str) -> Claim:
        reply = self.when_room(
            lambda: self.scripts["claim"](
                keys=[keys.job(job_id), keys.events(job_id), keys.LEASES],
                args=[worker, self.lease, self.max_attempts, self.ttl, keys.notify(job_id), job_id],
            )
        )
        if reply[0] != "run":
            if reply[1] in ENDED:  # e.g. cancelled while queued: skipped here, before any model is touched
                self.release_input(job_id)
            return Claim(run=False, reason=reply[1])
        flat = cast(list[str], reply[2])
        record = JobRecord.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
        return Claim(run=True, reason="run", attempt=int(reply[1]), job=record)

    def offer(self, worker: str, slots: dict[str, int], expires: float) -> int:
        """Offer the scheduler this worker's slots per queue until `expires` (0 slots: withdraw them), and
        admit waiting jobs where slots are free (`lua/admit.lua`); returns how many were admitted."""
        pairs = [item for queue, n in slots.items() for item in (queue, n)]
        return int(self.scripts["admit"](keys=[], args=[worker, f"{expires:.3f}", *pairs]))

    def withdraw(self, worker: str, queues: list[str]) -> int:
        """This worker drains: its slots go, and its running jobs stop counting against its queues' capacity
        (`lua/drain.lua`); returns how many waiting jobs that admitted for other workers."""
        return int(self.scripts["drain"](keys=[], args=[worker, *queues]))

    def read_input(self, job_id: str) -> bytes | None:
        """A job's input file (audio), or None once it has expired."""
        value = self._bytes().get(keys.input(job_id))
        return value if isinstance(value, bytes) else None

    def write_output(self, job_id: str, data: bytes) -> None:
        """A job's binary result (audio), expiring with the job."""
        with storing():
            self._bytes().set(keys.output(job_id), data, ex=self.ttl)

    def release_input(self, job_id: str) -> None:
        """Delete an ended job's input and give its bytes back to its key's storage quota (`lua/release.lua`)."""
        try:
            self.scripts["release"](keys=[keys.job(job_id), keys.input(job_id)], args=["0"])
        except RedisError as exc:  # it expires with the job anyway
            log.warning("could not release the input of %s: %s", job_id, exc)

    def when_room(self, write: Callable[[], T]) -> T:
        """`write()`, retried while Redis is full: a claim or a final state must not be lost (an unrecorded
        claim would ack the message of a job still queued; an unrecorded end leaves the job running)."""
        delay, waited, warned = 0.05, 0.0, -1.0
        while True:
            try:
                return write()
            except OutOfMemoryError as exc:
                if waited - warned >= 30 or warned < 0:
                    log.warning("Redis is full (%s); waiting for room, %.0f s so far", exc, waited)
                    warned = waited
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 2.0)

    def _bytes(self) -> Redis:
        if self.raw is None:
            raise RuntimeError("this WorkerStore was made without a raw (bytes) Redis client")
        return self.raw

    def execution(self, job_id: str, worker: str, deadline: float) -> JobExecution:
        return JobExecution(self, job_id, worker, deadline)


class JobExecution:
    """One claimed run of a job by this worker."""

    def __init__(self, store: WorkerStore, job_id: str, worker: str, deadline: float) -> None:
        self._stores = store
        self.job_id = job_id
        self.worker = worker
        self.deadline = deadline
        self._keys = [keys.job(job_id), keys.events(job_id)]

    def __enter__(self) -> JobExecution:
        self._stores.leases.hold(self.job_id, self.worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stores.leases.release(self.job_id)

    def emit(self, event: EventType, data: BaseModel) -> None:
        """Append an event (its data one of `contract`'s models, serialized here); raises `JobCancelled`/
        `JobTimedOut`/`LeaseLost` when the job must stop, `StorageFull` when Redis has no room for it."""
        with storing():
            status, _ = self._stores.scripts["emit"](
                keys=self._keys,
                args=[
                    str(event),
                    data.model_dump_json(),
                    self._stores.ttl,
                    keys.notify(self.job_id),
                    self._stores.lease,
                    self.worker,
                ],
            )
        self._check(status)

    def check(self) -> None:
        """Renew the lease and stop (`JobCancelled`/`JobTimedOut`/`LeaseLost`) if the job must, without
        writing an event: for a job that waits on others (a dialogue waiting for its stages)."""
        with storing():
            status = self._stores.scripts["renew"](
                keys=[self._keys[0], keys.LEASES], args=[self._stores.lease, self.worker, self.job_id]
            )
        self._check("running" if status == JobStatus.running else str(status))

    def _check(self, status: str) -> None:
        if status == JobStatus.cancelling:
            raise JobCancelled()
        if status != JobStatus.running:
            raise LeaseLost(f"job {self.job_id} is {status}, not running on this worker")
        if time.monotonic() > self.deadline:
            raise DeadlinePassed("the job ran longer than TASK_TIME_LIMIT_SECONDS")
        if self._stores.drain.overdue():
            raise HandBack()

    def hand_back(self) -> str:
        """Give the job up for another worker (`lua/handback.lua`): 'handed_back', or the status that kept it
        (it ended meanwhile, or is being cancelled)."""
        self._stores.leases.release(self.job_id)  # no renewal may bring the lease back
        return str(
            self._stores.when_room(
                lambda: self._stores.scripts["handback"](
                    keys=[self._keys[0], keys.LEASES], args=[self.worker, self.job_id]
                )
            )
        )

    def finish(
        self,
        status: JobStatus,
        *,
        result: BaseModel | dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> str:
        """Record how the job ended (waiting for room while Redis is full) and free its input; `result` is
        its kind's result model (`contract.results.JobResult`), stored as JSON."""
        args = [
            status.value,
            as_json(result) if result is not None else "",
            json.dumps(error) if error is not None else "",
            self._stores.ttl,
            keys.notify(self.job_id),
            self.worker,
        ]
        final = str(self._stores.when_room(lambda: self._stores.scripts["finish"](keys=self._keys, args=args)))
        if final in ENDED:  # not 'lost': then the worker that took the job over still reads its input
            self._stores.release_input(self.job_id)
        return final


def as_json(data: BaseModel | dict[str, Any]) -> str:
    """An event's data or a result as the store keeps it: the models' own JSON (leaving out the fields
    they omit when unset), a plain dict as it is."""
    return data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data)


@contextmanager
def storing() -> Iterator[None]:
    """Redis's OOM refusal as `StorageFull`, which fails the job with `insufficient_storage`."""
    try:
        yield
    except OutOfMemoryError as exc:
        raise StorageFull("the job store (Redis) is full, so the job's output could not be stored") from exc
