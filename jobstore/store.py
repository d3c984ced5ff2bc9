"""`JobStore`: the API's side of the job record — create (and enqueue), read, list, cancel.

A job is a Redis hash (`keys.job`) that expires after `JOB_TTL_SECONDS`; every change of state is a
Lua script (`jobstore/lua/`), so two parties can never both move a job out of the same state.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, cast

from celery import Celery
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError, RedisError

from contract.errors import BrokerUnavailable
from contract.jobs import JobKind, JobRecord, JobStatus, ServiceTier
from jobstore import keys, scripts
from jobstore.creation import (
    Allowance,
    Created,
    CreatePlan,
    JobStoreError,
    OversizedRequest,
    QueueFull,
)
from jobstore.storage import Charge, StorageAccount
from jobstore.waiting import place
from jobstore.webhooks import Webhook
from tasks.envelope import MessageMaker, is_redis_url
from tasks.registry import task_for

log = logging.getLogger(__name__)
CREATE_CHUNK = 500  # a batch's lines created per script call: Redis is never held for long
CANCEL_CHUNK = 2_000  # and cancelled


class JobStore:
    def __init__(
        self, redis: Redis, raw: Redis, celery: Celery, *, ttl: int, max_queue_depth: int, max_active: int = 0
    ) -> None:
        self.redis = redis
        self.raw = raw  # the same server without response decoding, for binary inputs
        self.celery = celery
        self.ttl = ttl
        self.max_queue_depth = max_queue_depth
        self.max_active = max_active
        self._direct = is_redis_url(str(celery.conf.broker_url))
        names = ("create", "create_many", "cancel", "cancel_many", "unqueue", "abandon", "announce")
        self._scripts = {name: redis.register_script(scripts.source(name)) for name in names}
        self.storage = StorageAccount(redis, ttl=ttl)

    async def create(
        self,
        kind: JobKind,
        request: dict[str, Any],
        *,
        owner: str,
        request_id: str | None = None,
        idempotency_key: str | None = None,
        queue_timeout: float | None = None,
        input_file: bytes | None = None,
        max_active: int | None = None,
        allowance: Allowance | None = None,
        parent: str | None = None,
        tier: ServiceTier = ServiceTier.default,
        principal: str | None = None,
        weight: float = 1.0,
        webhook: Webhook | None = None,
    ) -> Created:
        """Record a job and enqueue it; raises `QueueFull`, `TooManyActive`, `IdempotencyConflict`, or with an
        `allowance` `OversizedRequest` and `OverStorageQuota`. The one way a job comes to be: the API's routes,
        a batch's lines (`create_many`) and a dialogue's stages (`parent`: the dialogue job) all create here.
        A `webhook` is told when the job ends (`jobstore/webhooks.py`)."""
        charge = await self._charge(allowance, [(request, input_file)])
        plan = self._plan(
            kind,
            request,
            input_file,
            charge,
            owner=owner,
            max_active=self.max_active if max_active is None else max_active,
            request_id=request_id,
            idempotency_key=idempotency_key,
            expires_at=await self._server_time() + queue_timeout if queue_timeout is not None else None,
            parent=parent,
            tier=tier,
            principal=principal,
            weight=weight,
            webhook=webhook,
        )
        try:
            if input_file is not None:
                # Stored first: a job is never queued without its input.
                await self.raw.set(keys.input(plan.job_id), input_file, ex=self.ttl)
            reply = await self._scripts["create"](keys=plan.keys, args=plan.args)
            created = plan.outcome(reply)
        except BaseException:
            await self._undo([plan], charge)
            raise
        if created is None:  # an Idempotency-Key replay: nothing new is kept
            await self._undo([plan], charge)
        if not self._direct and created is not None:
            try:
                await self._send_through_celery(plan.task_name, plan.queue, plan.job_id, request_id)
            except Exception as exc:  # whatever the broker raised (re-raised below), the record must not wait on it
                # The broker did not take the message: end the record too, so no job waits forever for it.
                await self._abandon(plan.job_id, exc)
                raise
        if created is not None:
            return Created(job=created, replayed=False)
        job = await self.get(reply[1], owner=owner)
        if job is None:
            raise JobStoreError(f"job {reply[1]} vanished while being replayed")
        return Created(job=job, replayed=True)

    async def create_many(
        self,
        kind: JobKind,
        requests: Sequence[tuple[dict[str, Any], bytes | None]],
        *,
        owner: str,
        principal: str,
        request_id: str | None = None,
        allowance: Allowance | None = None,
        tier: ServiceTier = ServiceTier.flex,
        weight: float = 1.0,
    ) -> list[JobRecord]:
        """Record a job per (request, input) and hand them all to the scheduler, all or none
        (`lua/create_many.lua`, a chunk of lines per call so Redis is never held long), as `principal`'s at
        `tier`: they wait there and are admitted to the broker as slots free. They count against the storage
        quota and QUEUE_MAX_DEPTH, not MAX_ACTIVE_JOBS_PER_KEY. Raises `QueueFull` and what `_charge` raises."""
        if not requests:
            return []
        charge = await self._charge(allowance, requests)
        spec = task_for(kind)
        maker = MessageMaker(self.celery, spec.name, spec.queue, {"request_id": request_id} if request_id else None)
        plans = [
            self._plan(
                kind,
                request,
                file,
                charge,
                owner=owner,
                max_active=0,
                request_id=request_id,
                tier=tier,
                principal=principal,
                weight=weight,
                maker=maker if self._direct else None,
            )
            for request, file in requests
        ]
        queue = plans[0].queue
        # The fields every line shares go once; each line sends its own (its id, request, input size).
        common = {
            name: value for name, value in plans[0].fields.items() if all(p.fields.get(name) == value for p in plans)
        }
        head: list[Any] = [self.ttl, self.max_queue_depth, json.dumps({"queue": queue, "service_tier": tier.value})]
        head += [tier.value, principal, weight, 2 * len(common), *[item for pair in common.items() for item in pair]]
        created: list[CreatePlan] = []
        try:
            for first in range(0, len(plans), CREATE_CHUNK):
                chunk = plans[first : first + CREATE_CHUNK]
                async with self.raw.pipeline(transaction=False) as pipe:
                    for plan, (_, input_file) in zip(chunk, requests[first : first + CREATE_CHUNK], strict=True):
                        if input_file is not None:
                            pipe.set(keys.input(plan.job_id), input_file, ex=self.ttl)
                    await pipe.execute()
                args = list(head)
                for plan in chunk:
                    pairs = [
                        item for name, value in plan.fields.items() if name not in common for item in (name, value)
                    ]
                    args += [plan.job_id, plan.message, len(pairs), *pairs]
                reply = await self._scripts["create_many"](
                    keys=[keys.owner_index(owner), queue if self._direct else ""], args=args
                )
                if reply[0] == "full":
                    raise QueueFull(queue, int(reply[1]))
                created += chunk
        except BaseException:
            if created:  # all or none: the chunks already created end, and leave the scheduler
                await self.cancel_many([plan.job_id for plan in created], owner=owner, queue=queue)
            await self._undo(plans, charge)
            raise
        stamp = reply[2]
        records = [
            JobRecord.from_hash({**plan.fields, "created_at": stamp, "queued_at": stamp, "updated_at": stamp})
            for plan in plans
        ]
        if not self._direct:
            try:
                for plan in plans:
                    await self._send_through_celery(plan.task_name, plan.queue, plan.job_id, request_id)
            except Exception:
                await self.cancel_many([plan.job_id for plan in plans], owner=owner, queue=queue)
                raise
        return records

    def _plan(
        self,
        kind: JobKind,
        request: dict[str, Any],
        input_file: bytes | None,
        charge: Charge | None,
        *,
        owner: str,
        max_active: int,
        request_id: str | None,
        idempotency_key: str | None = None,
        expires_at: float | None = None,
        parent: str | None = None,
        tier: ServiceTier = ServiceTier.default,
        principal: str | None = None,
        weight: float = 1.0,
        maker: MessageMaker | None = None,
        webhook: Webhook | None = None,
    ) -> CreatePlan:
        return CreatePlan.build(
            self.celery,
            kind,
            request,
            owner=owner,
            ttl=self.ttl,
            max_queue_depth=self.max_queue_depth,
            max_active=max_active,
            direct=self._direct,
            request_id=request_id,
            idempotency_key=idempotency_key,
            input_file=input_file,
            expires_at=expires_at,
            parent=parent,
            extra_fields={
                **(charge.fields(len(input_file)) if charge is not None and input_file is not None else {}),
                **(webhook.fields() if webhook is not None else {}),
            },
            tier=tier,
            principal=principal,
            weight=weight,
            maker=maker,
        )

    async def _charge(
        self, allowance: Allowance | None, requests: Sequence[tuple[dict[str, Any], bytes | None]]
    ) -> Charge | None:
        """Check the requests' size and count what they store against the key's storage quota."""
        if allowance is None:
            return None
        total = 0
        for request, input_file in requests:
            size = len(json.dumps(request))  # ASCII: characters are bytes
            if allowance.max_request_bytes and size > allowance.max_request_bytes:
                raise OversizedRequest(size, allowance.max_request_bytes)
            total += size + (len(input_file) if input_file is not None else 0)
        if allowance.storage_quota is None:
            return None
        return await self.storage.charge(allowance.owner, total, quota=allowance.storage_quota)

    async def _undo(self, plans: Sequence[CreatePlan], charge: Charge | None) -> None:
        """After a refused (or replayed) create: give the storage back and drop the inputs stored for it."""
        if charge is not None:
            await self.storage.refund(charge)
        try:
            await self.raw.delete(*[keys.input(plan.job_id) for plan in plans])
        except RedisError as exc:  # they expire anyway
            log.warning("could not delete the inputs of refused jobs: %s", exc)

    async def _abandon(self, job_id: str, exc: BaseException) -> None:
        """End a job whose message the broker refused as `failed` (`lua/abandon.lua`) and free its input."""
        log.warning("the broker refused the message of job %s: %s", job_id, exc)
        error = json.dumps(BrokerUnavailable("the job broker refused the message").as_record())
        await self._scripts["abandon"](
            keys=[keys.job(job_id), keys.events(job_id)], args=[error, self.ttl, keys.notify(job_id)]
        )
        await self.storage.release(keys.job(job_id), keys.input(job_id))

    async def _send_through_celery(self, task_name: str, queue: str, job_id: str, request_id: str | None) -> None:
        # Another broker (RabbitMQ): kombu's client is synchronous, so publish from a thread.
        import anyio.to_thread

        headers = {"request_id": request_id} if request_id else {}
        await anyio.to_thread.run_sync(
            lambda: self.celery.send_task(
                task_name, kwargs={"job_id": job_id}, task_id=job_id, queue=queue, headers=headers
            )
        )

    async def _server_time(self) -> float:
        seconds, micros = await self.redis.time()
        return float(seconds) + micros / 1_000_000

    async def get(self, job_id: str, *, owner: str) -> JobRecord | None:
        """The job, or None when it does not exist, has expired, or belongs to someone else."""
        raw = cast(dict[str, str], await self.redis.hgetall(keys.job(job_id)))
        if not raw or raw.get("owner") != owner:
            return None
        return JobRecord.from_hash(raw)

    async def list(
        self,
        *,
        owner: str,
        limit: int,
        before: float | None = None,
        status: JobStatus | None = None,
        kind: JobKind | None = None,
    ) -> tuple[list[JobRecord], float | None]:
        """Newest first; returns the page and the cursor (a creation time) for the next, if any."""
        found: list[JobRecord] = []
        cursor = before
        while len(found) < limit:
            high = f"({cursor}" if cursor is not None else "+inf"
            batch = cast(
                list[tuple[str, float]],
                await self.redis.zrevrangebyscore(
                    keys.owner_index(owner), high, "-inf", start=0, num=max(limit * 2, 50), withscores=True
                ),
            )
            if not batch:
                return found, None
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id, _ in batch:
                    pipe.hgetall(keys.job(job_id))
                rows = cast(list[dict[str, str]], await pipe.execute())
            for (_, score), raw in zip(batch, rows, strict=True):
                cursor = score
                if not raw or raw.get("owner") != owner:
                    continue
                job = JobRecord.from_hash(raw)
                if (status is None or job.status == status) and (kind is None or job.kind == kind):
                    found.append(job)
                    if len(found) == limit:
                        return found, score
        return found, cursor

    async def output(self, job_id: str) -> bytes | None:
        """The job's binary result (synthesized audio), while it is stored."""
        value = await self.raw.get(keys.output(job_id))
        return value if isinstance(value, bytes) else None

    async def cancel(self, job_id: str, *, owner: str) -> JobStatus | None:
        """Cancel a queued job, or ask a running one to stop; None when there is no such job."""
        status = await self._scripts["cancel"](
            keys=[keys.job(job_id), keys.events(job_id)], args=[owner, self.ttl, keys.notify(job_id)]
        )
        if status == JobStatus.cancelled:  # its input is no longer needed (a running job's worker frees it)
            await self.storage.release(keys.job(job_id), keys.input(job_id))
        return None if status == "missing" else JobStatus(status)

    async def announce_place(self, job_id: str) -> bool:
        """Append a `queued` event with the job's place in line if it changed (at most once a second);
        False once the job is no longer queued, so a caller following it can stop asking."""
        where = await place(self.redis, job_id)
        if where is None:
            return False
        eta = "" if where.estimated_start_seconds is None else f"{where.estimated_start_seconds:.3f}"
        await self._scripts["announce"](
            keys=[keys.job(job_id), keys.events(job_id)],
            args=[where.queue_position, eta, self.ttl, keys.notify(job_id)],
        )
        return True

    async def cancel_many(self, job_ids: Sequence[str], *, owner: str, queue: str) -> int:
        """Cancel these jobs (a batch's), then take the messages of those that ended off `queue`, so they no
        longer count against QUEUE_MAX_DEPTH; returns how many were taken off. A message a worker already
        holds (or any, with another broker) is skipped when it arrives: its job is no longer `queued`."""
        for first in range(0, len(job_ids), CANCEL_CHUNK):
            chunk = list(job_ids[first : first + CANCEL_CHUNK])
            holding = await self._scripts["cancel_many"](keys=[], args=[owner, self.ttl, *chunk])
            for job_id in holding:  # their inputs are no longer needed
                await self.storage.release(keys.job(job_id), keys.input(job_id))
        if not self._direct or not job_ids:
            return 0
        try:  # one pass over the queue: about 40 ms at 10,000 messages
            return int(await self._scripts["unqueue"](keys=[queue], args=list(job_ids)))
        except OutOfMemoryError:  # Redis is full: the messages are skipped when they arrive instead
            log.warning("Redis is full: the messages of %d cancelled jobs stay queued", len(job_ids))
            return 0
