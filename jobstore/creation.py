"""A new job before it exists: its id, its record's fields, its broker message, the keys and arguments
of `lua/create.lua`, and the refusals that script can answer. Shared by the API's `JobStore` (async) and
the dialogue worker's stages (sync), which create jobs the same way.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

from celery import Celery

from config import Settings
from contract.jobs import JobKind, JobRecord, JobStatus, ServiceTier
from jobstore import keys
from tasks.envelope import MessageMaker
from tasks.registry import task_for


class JobStoreError(Exception):
    """Base of the job store's errors."""


class QueueFull(JobStoreError):
    def __init__(self, queue: str, depth: int) -> None:
        super().__init__(f"queue {queue!r} holds {depth} jobs, its limit; retry later")
        self.queue = queue
        self.depth = depth


class TooManyActive(JobStoreError):
    def __init__(self, owner: str, count: int, *, adding: int = 1, limit: int = 0) -> None:
        if adding == 1:
            message = f"{count} jobs of yours are queued or running, the limit; wait for some to finish"
        elif adding > limit:
            message = f"{adding} requests are more than the {limit} jobs a key may have queued or running at once"
        else:
            message = (
                f"{count} jobs of yours are queued or running; {adding} more would pass the limit of {limit}: "
                "wait for some to finish"
            )
        super().__init__(message)
        self.owner = owner
        self.count = count


class OversizedRequest(JobStoreError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the job's request is {size / 1024:.0f} KB as stored, over the {limit / 1024:.0f} KB a job may store "
            "(MAX_JOB_REQUEST_KB)"
        )
        self.size = size
        self.limit = limit


class IdempotencyConflict(JobStoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used with a different request body")


@dataclass(frozen=True, slots=True)
class Allowance:
    """What one API key may store with a job: a cap on the request's size (MAX_JOB_REQUEST_KB; 0: none)
    and the key's storage quota (STORAGE_QUOTA_MB_PER_KEY; None: not counted, 0: counted, never refused)."""

    owner: str  # the API key's id, whoever owns the jobs (a batch's lines, say)
    storage_quota: int | None = None
    max_request_bytes: int = 0

    @classmethod
    def of(cls, settings: Settings, key: str) -> Allowance:
        """What API key `key` may store with a job: MAX_JOB_REQUEST_KB, STORAGE_QUOTA_MB_PER_KEY."""
        return cls(
            owner=key, storage_quota=storage_quota(settings), max_request_bytes=settings.max_job_request_kb * 1024
        )


def storage_quota(settings: Settings) -> int | None:
    """STORAGE_QUOTA_MB_PER_KEY in bytes, or None when it is off (nothing is counted)."""
    return int(settings.storage_quota_mb_per_key * 1024 * 1024) or None


@dataclass(frozen=True, slots=True)
class Created:
    job: JobRecord
    replayed: bool  # True when an Idempotency-Key returned an existing job


def new_job_id() -> str:
    return "job_" + secrets.token_urlsafe(18)


def fingerprint(kind: JobKind, request: dict[str, Any], input_file: bytes | None = None) -> str:
    canonical = json.dumps([kind, request], sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode())
    if input_file is not None:
        digest.update(hashlib.sha256(input_file).digest())
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class CreatePlan:
    """The keys and arguments of `lua/create.lua` for one new job; shared by the API (async) and the
    dialogue worker (sync), which creates its stage jobs the same way."""

    job_id: str
    task_name: str
    queue: str
    owner: str
    idempotency_key: str | None
    fields: dict[str, str]
    message: str  # the broker message ('' when the broker is not this Redis)
    weight: float  # the principal's weight in the scheduler
    keys: list[str]
    args: list[Any]

    @classmethod
    def build(
        cls,
        celery: Celery,
        kind: JobKind,
        request: dict[str, Any],
        *,
        owner: str,
        ttl: int,
        max_queue_depth: int,
        max_active: int,
        direct: bool,
        request_id: str | None = None,
        idempotency_key: str | None = None,
        input_file: bytes | None = None,
        expires_at: float | None = None,
        parent: str | None = None,
        extra_fields: dict[str, str] | None = None,
        tier: ServiceTier = ServiceTier.default,
        principal: str | None = None,
        weight: float = 1.0,
        maker: MessageMaker | None = None,
    ) -> CreatePlan:
        """`tier`, `principal` (the API key the scheduler shares slots between; default: `owner`) and its
        `weight` place the job in the scheduler (`tasks/scheduler.py`); `maker` builds the broker message of
        many jobs of one task quickly (a batch's lines)."""
        job_id = new_job_id()
        spec = task_for(kind)
        task_name, queue = spec.name, spec.queue
        fields: dict[str, str] = {
            "id": job_id,
            "kind": kind.value,
            "status": JobStatus.queued.value,
            "owner": owner,
            "queue": queue,
            "request": json.dumps(request),
            "request_id": request_id or "",
            "attempts": "0",
            "tier": tier.value,
            "principal": principal or owner,
        }
        if expires_at is not None:
            fields["expires_at"] = f"{expires_at:.6f}"
        if input_file is not None:
            fields["input_bytes"] = str(len(input_file))
        if parent is not None:
            fields["parent"] = parent
        fields.update(extra_fields or {})
        if direct and maker is None:
            maker = MessageMaker(celery, task_name, queue, {"request_id": request_id} if request_id else None)
        message = maker.make(job_id) if maker is not None else ""
        return cls(
            job_id=job_id,
            task_name=task_name,
            queue=queue,
            owner=owner,
            idempotency_key=idempotency_key,
            fields=fields,
            message=message,
            weight=weight,
            keys=[
                keys.job(job_id),
                keys.events(job_id),
                keys.owner_index(owner),
                queue if direct else "",
                keys.idempotency(owner, idempotency_key) if idempotency_key else "",
                keys.active_jobs(owner),
            ],
            args=[
                job_id,
                ttl,
                max_queue_depth,
                fingerprint(kind, request, input_file) if idempotency_key else "",
                keys.notify(job_id),
                message,
                json.dumps({"queue": queue, "service_tier": tier.value}),
                max_active,
                tier.value,
                principal or owner,
                weight,
                *[item for pair in fields.items() for item in pair],
            ],
        )

    def outcome(self, reply: list[Any]) -> JobRecord | None:
        """The new job's record, or None when an Idempotency-Key replays an existing one (reply[1])."""
        outcome, value = reply[0], reply[1]
        if outcome == "full":
            raise QueueFull(self.queue, int(value))
        if outcome == "quota":
            raise TooManyActive(self.owner, int(value))
        if outcome == "conflict":
            raise IdempotencyConflict(self.idempotency_key or "")
        if outcome != "created":
            return None
        created_at = reply[2]  # the record is what was just written: no need to read it back
        return JobRecord.from_hash(
            {**self.fields, "created_at": created_at, "queued_at": created_at, "updated_at": created_at}
        )
