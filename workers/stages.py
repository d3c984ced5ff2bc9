"""A dialogue's stages: `StageRunner`, all a dialogue sees of them, and `Stages`, which runs each stage as
a job on its model's queue — created by `JobStore.create`, as every job is — and reads its events back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from celery import Celery
from kombu.exceptions import OperationalError
from pydantic import BaseModel
from redis import Redis

from config import Settings
from config.redis_urls import async_client
from contract.errors import EngineError, JobError, StageCancelled, StageExpired, failure_from
from contract.generation import ChatMessage
from contract.jobs import EventType, JobKind, JobRecord, JobStatus
from contract.results import result_of
from jobstore import keys
from jobstore.creation import JobStoreError
from jobstore.event_log import Event
from jobstore.store import JobStore
from workers.execution import WorkerStore

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)
STORE_TIMEOUT_SECONDS = 10.0  # one Redis reply while creating or cancelling a stage
HISTORY_MESSAGES = 40  # the last 20 turns of a conversation are kept


def stage_failure(stage: str, status: str, error: dict[str, Any] | None) -> JobError:
    """A stage job's failure as the dialogue's: the stage's own class in the tree (so its code), with a
    message that names the stage."""
    if error:
        failed = failure_from(error)
        return type(failed)(f"{stage} failed: {failed.message}")
    if status == JobStatus.cancelled:
        return StageCancelled(f"{stage} failed: it was cancelled")
    if status == JobStatus.expired:
        return StageExpired(f"{stage} failed: it expired in its queue")
    return JobError(f"{stage} failed: it ended {status}")


@dataclass(slots=True)
class Stage:
    name: str  # transcription, generation, synthesis
    job_id: str
    created: float
    after: str = "0-0"  # the last event id read
    started: bool = False
    text: str | None = None  # synthesis: the sentence


class StageRunner(Protocol):
    """All a dialogue sees of its stages and its store: `Stages` runs each stage as a job on its model's
    queue; a test plays recorded stage events back."""

    @property
    def wait_timeout_seconds(self) -> float:
        """How long a stage may wait for a worker to take it (JOB_WAIT_TIMEOUT_SECONDS)."""

    def start(
        self, parent: JobRecord, name: str, kind: JobKind, request: dict[str, Any], audio: bytes | None = None
    ) -> Stage:
        """Queue a stage job (its `request` as JSON-ready data, `audio` its input file)."""

    def read(self, stages: list[Stage], block_ms: int) -> list[tuple[Stage, str, Any]]:
        """New events of the given stages, in order per stage: (stage, type, data as stored)."""

    def ended(self, stage: Stage, status: JobStatus, model: type[R]) -> R:
        """The result of a stage that has ended, as `model`, or its failure raised."""

    def cancel(self, stage: Stage, owner: str) -> None: ...

    def overdue(self, stage: Stage) -> bool:
        """A stage no worker has taken within `wait_timeout_seconds`."""

    def history(self, owner: str, conversation_id: str | None) -> list[ChatMessage]: ...

    def remember(self, owner: str, conversation_id: str | None, *turn: ChatMessage) -> None: ...

    def read_input(self, job_id: str) -> bytes | None:
        """The dialogue job's audio, or None once it has expired."""

    def write_output(self, job_id: str, data: bytes) -> None:
        """The dialogue job's encoded audio, kept for `GET /v1/jobs/{id}/audio`."""


class Stages:
    """Creates a dialogue's stage jobs and reads their events (sync; the worker runs jobs in threads).

    Stage jobs are created by the job store the API uses (`JobStore.create`, async), run on a loop of
    their own, so a stage is refused, enqueued, or abandoned when the broker refuses it, as any job is.
    """

    def __init__(self, store: WorkerStore, celery: Celery, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.redis: Redis = store.redis  # the store's decoded client
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="speechq-stage-store", daemon=True)
        self._thread.start()
        url = settings.redis_url
        assert url is not None, "a worker starts only with REDIS_URL set"
        # Bounded waits: a stalled Redis fails the dialogue instead of holding its thread for ever.
        wait = STORE_TIMEOUT_SECONDS
        self._jobs = JobStore(
            async_client(url, decode_responses=True, socket_timeout=wait, socket_connect_timeout=wait),
            async_client(url, socket_timeout=wait, socket_connect_timeout=wait),
            celery,
            ttl=settings.job_ttl_seconds,
            max_queue_depth=settings.queue_max_depth,
        )

    def close(self) -> None:
        """Close the store's connections and stop its loop (a worker process just exits)."""
        self._call(self._jobs.redis.aclose())
        self._call(self._jobs.raw.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        # Past the sockets' own timeouts, so the store's error (not a bare TimeoutError) is what is raised.
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=3 * STORE_TIMEOUT_SECONDS)

    def start(
        self, parent: JobRecord, name: str, kind: JobKind, request: dict[str, Any], audio: bytes | None = None
    ) -> Stage:
        creating = self._jobs.create(
            kind,
            request,
            owner=keys.stage_owner(parent.owner),  # stage jobs stay out of the owner's list and quota
            request_id=parent.request_id,
            input_file=audio,
            max_active=0,
            parent=parent.id,
            # A stage runs at its dialogue's tier, shared out as the dialogue's key's.
            tier=parent.service_tier,
            principal=parent.owner,
            weight=self.settings.key_policy(parent.owner).weight,
        )
        try:
            job = self._call(creating).job
        except JobStoreError as exc:
            raise EngineError(f"could not queue the {name} stage: {exc}") from exc
        except OperationalError as exc:  # the store has ended the stage's record `failed`
            raise EngineError(f"could not queue the {name} stage: the job broker is unreachable") from exc
        return Stage(name=name, job_id=job.id, created=time.monotonic())

    def read(self, stages: list[Stage], block_ms: int) -> list[tuple[Stage, str, Any]]:
        """New events of the given stages, in order per stage: (stage, type, data)."""
        by_key = {keys.events(stage.job_id): stage for stage in stages}
        reply = self.redis.xread({key: stage.after for key, stage in by_key.items()}, block=block_ms)
        found: list[tuple[Stage, str, Any]] = []
        for key, entries in cast(list[tuple[str, list[tuple[str, dict[str, str]]]]], reply or []):
            stage = by_key[key]
            for event_id, fields in entries:
                event = Event.from_entry(event_id, fields)
                stage.after = event.id
                stage.started = stage.started or event.type == EventType.started
                found.append((stage, event.type, event.data))
        return found

    def record(self, stage: Stage) -> JobRecord:
        raw = cast(dict[str, str], self.redis.hgetall(keys.job(stage.job_id)))
        if not raw:
            raise EngineError(f"the {stage.name} stage job {stage.job_id} has vanished")
        return JobRecord.from_hash(raw)

    def ended(self, stage: Stage, status: JobStatus, model: type[R]) -> R:
        """The result of a stage that has ended, as `model`, or its failure raised."""
        record = self.record(stage)
        if status != JobStatus.succeeded or record.result is None:
            raise stage_failure(stage.name, status, record.error)
        return result_of(record, model)

    def cancel(self, stage: Stage, owner: str) -> None:
        try:
            self._call(self._jobs.cancel(stage.job_id, owner=keys.stage_owner(owner)))
        except Exception as exc:  # noqa: BLE001 - best effort: the stage job expires with its TTL anyway
            log.warning("could not cancel stage %s: %s", stage.job_id, exc)

    @property
    def wait_timeout_seconds(self) -> float:
        return self.settings.job_wait_timeout_seconds

    def overdue(self, stage: Stage) -> bool:
        """A stage no worker has taken within JOB_WAIT_TIMEOUT_SECONDS (no worker serves its queue)."""
        return not stage.started and time.monotonic() - stage.created > self.wait_timeout_seconds

    def read_input(self, job_id: str) -> bytes | None:
        return self.store.read_input(job_id)

    def write_output(self, job_id: str, data: bytes) -> None:
        self.store.write_output(job_id, data)

    def history(self, owner: str, conversation_id: str | None) -> list[ChatMessage]:
        if conversation_id is None:
            return []
        items = cast(list[str], self.redis.lrange(keys.conversation(owner, conversation_id), 0, -1))
        return [ChatMessage.model_validate_json(item) for item in items]

    def remember(self, owner: str, conversation_id: str | None, *turn: ChatMessage) -> None:
        if conversation_id is None:
            return
        key = keys.conversation(owner, conversation_id)
        with self.redis.pipeline() as pipe:
            pipe.rpush(key, *[message.model_dump_json() for message in turn])
            pipe.ltrim(key, -HISTORY_MESSAGES, -1)
            pipe.expire(key, self.settings.job_ttl_seconds)
            pipe.execute()
