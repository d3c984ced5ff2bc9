"""Job state transitions against a real Redis: each Lua script moves a job only from the state it expects."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from config import Settings
from contract.jobs import JobKind, JobStatus
from jobstore import keys
from jobstore.celery_app import create_celery
from jobstore.creation import Created, IdempotencyConflict, QueueFull
from jobstore.store import JobStore
from workers.execution import JobCancelled, LeaseLost, WorkerStore


@pytest.fixture
def store_url(redis_url: str) -> str:
    """A database of its own, so no worker of the session ever sees these jobs' messages."""
    return redis_url.rstrip("/").rsplit("/", 1)[0] + "/7" if redis_url.count("/") > 2 else redis_url + "/7"


@pytest.fixture
def sync_redis(store_url: str) -> Iterator[Redis]:
    client = Redis.from_url(store_url, decode_responses=True)
    yield client
    client.close()


def create(store_url: str, *, owner: str = "tester", max_depth: int = 0, **kwargs: object) -> Created:
    async def go() -> Created:
        redis = AsyncRedis.from_url(store_url, decode_responses=True)
        # A broker URL that is not Redis keeps these jobs out of the real worker's queue.
        celery = create_celery(Settings(redis_url=store_url, celery_broker_url="memory://"))
        celery.send_task = lambda *_, **__: None  # type: ignore[method-assign]
        try:
            store = JobStore(redis, redis, celery, ttl=600, max_queue_depth=max_depth)
            return await store.create(JobKind.generate, {"prompt": "x"}, owner=owner, **kwargs)  # type: ignore[arg-type]
        finally:
            await redis.aclose()

    return asyncio.run(go())


def events(redis: Redis, job_id: str) -> list[str]:
    return [fields["type"] for _, fields in redis.xrange(keys.events(job_id))]


def test_a_redelivered_message_for_a_finished_job_does_nothing(store_url: str, sync_redis: Redis) -> None:
    store = WorkerStore(sync_redis, ttl=600, lease=30, max_attempts=3)
    job_id = create(store_url).job.id
    assert store.claim(job_id, "w1").run
    with store.execution(job_id, "w1", time.monotonic() + 60) as run:
        run.emit("token", {"text": "a"})
        assert run.finish(JobStatus.succeeded, result={"text": "a"}) == "succeeded"
    again = store.claim(job_id, "w2")
    assert not again.run and again.reason == "succeeded"
    assert events(sync_redis, job_id) == ["queued", "started", "token", "result", "done"]


def test_a_second_delivery_while_the_lease_is_live_is_busy(store_url: str, sync_redis: Redis) -> None:
    store = WorkerStore(sync_redis, ttl=600, lease=30, max_attempts=3)
    job_id = create(store_url).job.id
    assert store.claim(job_id, "w1").run
    assert store.claim(job_id, "w2").reason == "busy"


def test_an_expired_lease_is_taken_over_until_the_attempt_cap(store_url: str, sync_redis: Redis) -> None:
    store = WorkerStore(sync_redis, ttl=600, lease=0.2, max_attempts=2)
    job_id = create(store_url).job.id
    assert store.claim(job_id, "w1").attempt == 1
    time.sleep(0.3)
    second = store.claim(job_id, "w2")
    assert second.run and second.attempt == 2
    with pytest.raises(LeaseLost):  # the first worker, back from the dead, may not write any more
        store.execution(job_id, "w1", time.monotonic() + 60).emit("token", {"text": "late"})
    time.sleep(0.3)
    third = store.claim(job_id, "w3")
    assert not third.run and third.reason == "poison"
    raw = sync_redis.hgetall(keys.job(job_id))
    assert raw["status"] == "failed" and "worker_lost" in raw["error"] and "JOB_MAX_ATTEMPTS=2" in raw["error"]
    assert events(sync_redis, job_id)[-2:] == ["error", "done"]


def test_cancel_while_running_stops_the_next_emit(store_url: str, sync_redis: Redis) -> None:
    store = WorkerStore(sync_redis, ttl=600, lease=30, max_attempts=3)
    created = create(store_url)
    job_id = created.job.id
    assert store.claim(job_id, "w1").run
    sync_redis.hset(keys.job(job_id), "status", "cancelling")
    run = store.execution(job_id, "w1", time.monotonic() + 60)
    with pytest.raises(JobCancelled):
        run.emit("token", {"text": "x"})
    assert run.finish(JobStatus.cancelled) == "cancelled"


def test_idempotency_is_scoped_to_the_owner(store_url: str) -> None:
    key = uuid.uuid4().hex
    mine = create(store_url, owner="alice", idempotency_key=key)
    assert create(store_url, owner="alice", idempotency_key=key).job.id == mine.job.id
    assert create(store_url, owner="bob", idempotency_key=key).job.id != mine.job.id


def test_idempotency_conflict_raises(store_url: str) -> None:
    key = uuid.uuid4().hex
    create(store_url, idempotency_key=key)

    async def other_body() -> None:
        redis = AsyncRedis.from_url(store_url, decode_responses=True)
        celery = create_celery(Settings(redis_url=store_url, celery_broker_url="memory://"))
        celery.send_task = lambda *_, **__: None  # type: ignore[method-assign]
        try:
            store = JobStore(redis, redis, celery, ttl=600, max_queue_depth=0)
            await store.create(JobKind.generate, {"prompt": "y"}, owner="tester", idempotency_key=key)
        finally:
            await redis.aclose()

    with pytest.raises(IdempotencyConflict):
        asyncio.run(other_body())


def test_a_full_queue_refuses_and_records_nothing(store_url: str) -> None:
    async def go() -> None:
        redis = AsyncRedis.from_url(store_url, decode_responses=True)
        settings = Settings(redis_url=store_url)
        celery = create_celery(settings)
        store = JobStore(redis, redis, celery, ttl=600, max_queue_depth=1)
        queue = "llm"
        try:
            await redis.lpush(queue, "placeholder")
            with pytest.raises(QueueFull):
                await store.create(JobKind.generate, {"prompt": "x"}, owner="full-queue")
            jobs, _ = await store.list(owner="full-queue", limit=10)
            assert jobs == []
        finally:
            await redis.lrem(queue, 0, "placeholder")
            await redis.aclose()

    asyncio.run(go())
