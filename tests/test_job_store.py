"""Job state transitions against a real Redis: each Lua script moves a job only from the state it expects."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any
from unittest.mock import Mock

import pytest
from celery import Celery
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from config import Settings
from contract.generation import Token
from contract.jobs import EventType, JobKind, JobStatus
from jobstore import keys
from jobstore.creation import Created, IdempotencyConflict, QueueFull
from jobstore.store import JobStore
from tasks.celery_app import create_celery
from tests.records import age_lease, event_types
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


def unpublished(store_url: str) -> Celery:
    """A Celery app that publishes nothing: a broker URL that is not Redis keeps these jobs out of the real
    worker's queue, and sending their messages is not what these tests are about."""
    celery = create_celery(Settings(redis_url=store_url, celery_broker_url="memory://"))
    celery.send_task = Mock(name="send_task")  # type: ignore[method-assign]  # a stand-in on purpose
    return celery


def create(store_url: str, *, owner: str = "tester", max_depth: int = 0, **kwargs: Any) -> Created:
    async def go() -> Created:
        redis = AsyncRedis.from_url(store_url, decode_responses=True)
        try:
            store = JobStore(redis, redis, unpublished(store_url), ttl=600, max_queue_depth=max_depth)
            return await store.create(JobKind.generate, {"prompt": "x"}, owner=owner, **kwargs)
        finally:
            await redis.aclose()

    return asyncio.run(go())


def events(redis: Redis, job_id: str) -> list[str]:
    return event_types(redis, job_id)


def test_a_redelivered_message_for_a_finished_job_does_nothing(store_url: str, sync_redis: Redis) -> None:
    store = WorkerStore(sync_redis, ttl=600, lease=30, max_attempts=3)
    job_id = create(store_url).job.id
    assert store.claim(job_id, "w1").run
    with store.execution(job_id, "w1", time.monotonic() + 60) as run:
        run.emit(EventType.token, Token(text="a"))
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
    store = WorkerStore(sync_redis, ttl=600, lease=30, max_attempts=2)
    job_id = create(store_url).job.id
    assert store.claim(job_id, "w1").attempt == 1
    assert store.claim(job_id, "w2").reason == "busy"
    age_lease(sync_redis, job_id, 31)  # w1 went quiet for longer than its lease
    second = store.claim(job_id, "w2")
    assert second.run and second.attempt == 2
    with pytest.raises(LeaseLost):  # the first worker, back from the dead, may not write any more
        store.execution(job_id, "w1", time.monotonic() + 60).emit(EventType.token, Token(text="late"))
    age_lease(sync_redis, job_id, 31)  # and so did w2
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
        run.emit(EventType.token, Token(text="x"))
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
        try:
            store = JobStore(redis, redis, unpublished(store_url), ttl=600, max_queue_depth=0)
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


def test_a_job_the_broker_refuses_ends_failed_and_keeps_no_input(private_redis: str) -> None:
    """With a broker other than the job store's Redis, a refused message ends the new record `failed`
    (`broker_unavailable`), its input freed, and the caller hears the broker's error; as for a dialogue stage."""
    from kombu.exceptions import OperationalError

    from tests.stack import free_port

    async def go() -> None:
        redis = AsyncRedis.from_url(private_redis, decode_responses=True)
        raw = AsyncRedis.from_url(private_redis)
        celery = create_celery(
            Settings(redis_url=private_redis, celery_broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//")
        )
        celery.conf.broker_connection_retry = False
        celery.conf.broker_connection_max_retries = 0
        try:
            store = JobStore(redis, raw, celery, ttl=600, max_queue_depth=0)
            with pytest.raises(OperationalError):
                await store.create(JobKind.transcribe, {"filename": "a.wav"}, owner="k", input_file=b"RIFF....")
        finally:
            await redis.aclose()
            await raw.aclose()

    asyncio.run(go())
    with Redis.from_url(private_redis, decode_responses=True) as r:
        [job_id] = r.zrange(keys.owner_index("k"), 0, -1)
        record = r.hgetall(keys.job(job_id))
        assert record["status"] == "failed" and json.loads(record["error"])["type"] == "broker_unavailable"
        assert events(r, job_id)[-2:] == ["error", "done"]
        assert not r.exists(keys.input(job_id))
