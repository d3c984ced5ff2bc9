"""Typed reads of jobs straight from Redis, for tests that look beneath the API, and jobs created the one
way jobs are (`JobStore.create`) for tests that start beneath it.

redis-py types every reply as `bytes | str` whatever the client decodes; these take a client made with
`decode_responses=True` and say so once, here.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol, cast

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from config import load_settings
from contract.jobs import JobKind, JobRecord
from jobstore import keys
from jobstore.store import JobStore
from tasks.celery_app import create_celery
from tests.stack import wait_until

EventLog = list[tuple[str, dict[str, str]]]  # (event id, {"type", "data"})


def event_log(redis: Redis, job_id: str) -> EventLog:
    return cast(EventLog, redis.xrange(keys.events(job_id)))


def event_types(redis: Redis, job_id: str) -> list[str]:
    return [fields["type"] for _, fields in event_log(redis, job_id)]


def job_hash(redis: Redis, job_id: str) -> dict[str, str]:
    return cast(dict[str, str], redis.hgetall(keys.job(job_id)))


def age_lease(redis: Redis, job_id: str, seconds: float) -> None:
    """Let `seconds` pass for a job's lease, and only for it: its `lease_until` and its place in the lease
    index move back, as if its worker had gone quiet that long. Tests drive time this way, not by sleeping."""
    lease_until = float(cast(str, redis.hget(keys.job(job_id), "lease_until")))
    redis.hset(keys.job(job_id), "lease_until", f"{lease_until - seconds:.6f}")
    if redis.zscore(keys.LEASES, job_id) is not None:
        redis.zadd(keys.LEASES, {job_id: lease_until - seconds})


def owner_jobs(redis: Redis, owner: str) -> list[str]:
    """The ids in an owner's job index, oldest first."""
    return cast(list[str], redis.zrange(keys.owner_index(owner), 0, -1))


def create_job(
    redis_url: str, kind: JobKind, request: dict[str, Any], *, owner: str = "k", request_id: str | None = None
) -> JobRecord:
    """A job recorded and queued by `JobStore.create` (no checks of the request: tests may send what the API
    would refuse), on the server's own Redis as broker."""

    async def create() -> JobRecord:
        redis = AsyncRedis.from_url(redis_url, decode_responses=True)
        raw = AsyncRedis.from_url(redis_url)
        try:
            celery = create_celery(load_settings(redis_url=redis_url, celery_broker_url=None))
            store = JobStore(redis, raw, celery, ttl=600, max_queue_depth=0)
            return (await store.create(kind, request, owner=owner, request_id=request_id, max_active=0)).job
        finally:
            await redis.aclose()
            await raw.aclose()

    return asyncio.run(create())


class WithRedis(Protocol):
    redis_url: str


def newest_job_with(stack: WithRedis, marker: str) -> dict[str, str]:
    with Redis.from_url(stack.redis_url, decode_responses=True) as r:
        for job_id in reversed(owner_jobs(r, "anonymous")[-50:]):
            record = job_hash(r, job_id)
            if marker in record.get("request", ""):
                return record
    raise AssertionError(f"no job with {marker!r}")


def cancelled_soon(stack: WithRedis, marker: str, gone_at: float) -> None:
    def ended() -> dict[str, str] | None:
        record = newest_job_with(stack, marker)
        return record if record["status"] in ("cancelled", "cancelling") else None

    wait_until(ended, timeout=3.0, interval=0.1, what="the abandoned job cancelled")
    assert time.monotonic() - gone_at <= 3.5
    wait_until(lambda: newest_job_with(stack, marker)["status"] == "cancelled", timeout=10, what="it to stop")
