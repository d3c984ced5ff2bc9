"""Public shapes of jobs: what the job routes answer. Internal records never leave the API as-is."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from contract.catalog import ModelRole
from contract.common import omitted_when_none
from contract.dialogue import DialogueResult
from contract.jobs import JobKind, JobRecord, JobStatus, ServiceTier
from contract.results import JobResult, parse_result
from jobstore.waiting import Place


class JobLinks(BaseModel):
    self: str
    events: str
    result: str
    ws: str


class JobError(BaseModel):
    type: str
    message: str


class JobCreated(BaseModel):
    id: str
    kind: JobKind
    status: JobStatus
    created_at: datetime
    links: JobLinks


class JobTimings(BaseModel):
    queue_seconds: float | None = None
    run_seconds: float | None = None
    total_seconds: float | None = None


class JobPublic(JobCreated):
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    timestamps: dict[str, datetime]
    timings: JobTimings
    attempts: int
    worker: str | None = None
    progress: dict[str, Any] | None = None
    error: JobError | None = None
    result: JobResult | None = None  # the kind's result model (`contract.results`)
    request_id: str | None = None
    service_tier: ServiceTier  # the tier it was scheduled at
    queue_position: int | None = omitted_when_none()  # while queued: jobs that will start before it
    estimated_start_seconds: float | None = omitted_when_none()  # while queued, once the queue has a measured rate
    webhook: WebhookStatus | None = omitted_when_none()  # `GET /v1/jobs/{id}` of a job that asked for one


class WebhookStatus(BaseModel):
    """Where a job's webhook stands: `waiting` (the job has not ended), `not_sent` (it ended in a way its
    `events` leave out), `pending` (queued, not yet tried), `failing` (tried, to be tried again: see
    `last_error`), `delivered`, `failed` (given up: see `last_error`), or `unknown` (its record has expired)."""

    url: str
    events: list[str]
    state: Literal["waiting", "not_sent", "pending", "failing", "delivered", "failed", "unknown"]
    event_id: str | None = None  # the `webhook-id` the receiver sees (and deduplicates on)
    attempts: int = 0
    last_status: int | None = None  # the receiver's HTTP status at the last try
    last_error: str | None = None
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None

    @classmethod
    def of(cls, job: JobRecord, delivery: dict[str, str] | None) -> WebhookStatus | None:
        """`job`'s webhook as it stands, given its event's delivery record (None: no event, or it expired)."""
        if job.webhook_url is None:
            return None
        status = cls(url=job.webhook_url, events=list(job.webhook_events), state="waiting")
        if not job.status.terminal:
            return status
        if job.webhook_event is None or delivery is None:
            return status.model_copy(update={"state": "not_sent" if job.webhook_event is None else "unknown"})
        state = delivery.get("state", "pending")
        return status.model_copy(
            update={
                "state": state if state in ("pending", "failing", "delivered", "failed") else "pending",
                "event_id": job.webhook_event,
                "attempts": int(delivery.get("attempts") or 0),
                "last_status": int(delivery["last_status"]) if delivery.get("last_status") else None,
                "last_error": delivery.get("last_error") or None,
                "last_attempt_at": _when(_float(delivery.get("last_attempt_at"))),
                "next_attempt_at": _when(_float(delivery.get("next_attempt_at"))),
                "delivered_at": _when(_float(delivery.get("delivered_at"))),
            }
        )


def _float(value: str | None) -> float | None:
    return float(value) if value else None


class DialogueResultPublic(DialogueResult):
    """A dialogue's result at `GET /v1/jobs/{id}/result`: where its audio is, beside the rest."""

    audio_url: str


class JobsPublic(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None = None
    has_more: bool


def _when(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


def links(job_id: str) -> JobLinks:
    base = f"/v1/jobs/{job_id}"
    return JobLinks(self=base, events=f"{base}/events", result=f"{base}/result", ws=f"{base}/ws")


def job_created(job: JobRecord) -> JobCreated:
    return JobCreated(
        id=job.id, kind=job.kind, status=job.status, created_at=_when(job.times["created_at"]), links=links(job.id)
    )


def job_public(job: JobRecord, place: Place | None = None, webhook: WebhookStatus | None = None) -> JobPublic:
    t = job.times
    created, started, finished = t.get("created_at"), t.get("started_at"), t.get("finished_at")
    return JobPublic(
        id=job.id,
        kind=job.kind,
        status=job.status,
        created_at=_when(created),
        started_at=_when(started),
        finished_at=_when(finished),
        updated_at=_when(t.get("updated_at")),
        timestamps={name: when for name, value in sorted(t.items()) if (when := _when(value)) is not None},
        timings=JobTimings(
            queue_seconds=round(started - created, 6) if started and created else None,
            run_seconds=round(finished - started, 6) if finished and started else None,
            total_seconds=round(finished - created, 6) if finished and created else None,
        ),
        attempts=job.attempts,
        worker=job.worker,
        progress=job.progress,
        error=JobError(**job.error) if job.error else None,
        result=parse_result(job.kind, job.result) if job.result is not None else None,
        request_id=job.request_id,
        service_tier=job.service_tier,
        queue_position=place.queue_position if place is not None else None,
        estimated_start_seconds=place.estimated_start_seconds if place is not None else None,
        webhook=webhook,
        links=links(job.id),
    )


# --- the served models and the workers -----------------------------------------------------------------


class ModelPublic(BaseModel):
    """A registered model: OpenAI's `model` (`id`, `object`, `created`, `owned_by`), the original API's
    `ModelInfo` (`name`, `description`), and where it is loaded right now."""

    id: str
    name: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "speechq"
    role: ModelRole
    package: str
    description: str
    license: str
    loaded: bool
    loaded_on: list[str] = Field(description="the public ids of the live workers that have it loaded")
    voices: list[str] | None = omitted_when_none(description="text to speech: the voices, the default first")
    sample_rate: int | None = omitted_when_none(description="text to speech: the rate the engine speaks at")


class ModelsPublic(BaseModel):
    """`GET /v1/models`: OpenAI's list (`data`), and the same entries as `models` for the original API's clients."""

    object: Literal["list"] = "list"
    data: list[ModelPublic]
    models: list[ModelPublic]


class VoicePublic(BaseModel):
    id: str
    model: str
    sample_rate: int | None
    default: bool = Field(description="the engine's default voice")


class VoicesPublic(BaseModel):
    """`GET /v1/audio/voices`: every voice offered offline, and which voice serves each OpenAI voice name."""

    object: Literal["list"] = "list"
    data: list[VoicePublic]
    default_model: str
    openai_voices: dict[str, str]


class WorkerPublic(BaseModel):
    """A live worker, as every key may see it: nothing about its machine (host, pid, paths, ports)."""

    id: str
    object: Literal["worker"] = "worker"
    queues: list[str]
    device: str | None
    cuda_visible_devices: str | None
    models: list[str] = Field(description="the registered models it has loaded")
    started_at: float
    heartbeat_age_seconds: float | None = Field(None, description="since it last advertised itself")
    slots: int = Field(0, description="jobs it runs at once, over all its queues")
    busy: int = Field(0, description="jobs it is running now")
    draining: bool = Field(False, description="taking no more jobs: it finishes or hands back what it runs")


class QueuePublic(BaseModel):
    """One queue's load now: what its workers offer, what runs and what waits."""

    queue: str
    workers: int
    slots: int
    running: int
    admitted: int = Field(description="jobs admitted to the broker's list, not yet taken by a worker")
    waiting: dict[str, int] = Field(description="jobs waiting in the scheduler, per service tier")
    principals: dict[str, int] | None = omitted_when_none(
        description="jobs waiting per API key: every key's for an operator (OPERATOR_KEY_IDS), else only yours"
    )


class QueuesPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[QueuePublic]


class WorkersPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[WorkerPublic]
