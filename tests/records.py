"""Typed reads of jobs straight from Redis, for tests that look beneath the API.

redis-py types every reply as `bytes | str` whatever the client decodes; these take a client made with
`decode_responses=True` and say so once, here.
"""

from __future__ import annotations

from typing import cast

from redis import Redis

from jobstore import keys

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
