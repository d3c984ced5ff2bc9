"""The scheduler against a real Redis: tiers, fair shares between keys, no starvation, queue positions that
match the order jobs start in, cheap cancels. A stand-in worker takes messages off the queue as Celery does
(oldest first) and claims and finishes them through the worker's own store, which admits the next job."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from cli.embedded_redis import EmbeddedRedis
from config import KeyPolicy, Settings
from contract.jobs import JobKind, JobStatus, ServiceTier
from jobstore import keys
from jobstore.store import JobStore
from jobstore.waiting import Place, place, waiting_counts
from tasks.celery_app import create_celery
from tasks.scheduler import resolve_tier
from workers.execution import WorkerStore

QUEUE = "llm"


class Line:
    """A private Valkey, a job store on it (its own Redis as broker) and one stand-in worker's slots."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.redis = Redis.from_url(url, decode_responses=True)
        self.worker = WorkerStore(self.redis, ttl=600, lease=30, max_attempts=3)
        self.loop = asyncio.new_event_loop()
        self.async_redis = AsyncRedis.from_url(url, decode_responses=True)
        celery = create_celery(Settings(redis_url=url))
        self.store = JobStore(self.async_redis, self.async_redis, celery, ttl=600, max_queue_depth=0)

    def offer(self, slots: int) -> int:
        return self.worker.offer("w1", {QUEUE: slots}, expires=time.time() + 600)

    def create(self, tier: ServiceTier, principal: str = "k1", weight: float = 1.0) -> str:
        work = self.store.create(
            JobKind.generate, {"prompt": "x"}, owner=principal, tier=tier, principal=principal, weight=weight
        )
        return self.loop.run_until_complete(work).job.id

    def create_many(self, count: int, tier: ServiceTier, principal: str) -> list[str]:
        work = self.store.create_many(
            JobKind.generate,
            [({"prompt": str(n)}, None) for n in range(count)],
            owner=principal,
            principal=principal,
            tier=tier,
        )
        return [job.id for job in self.loop.run_until_complete(work)]

    def place(self, job_id: str) -> Place:
        found = self.loop.run_until_complete(place(self.async_redis, job_id))
        assert found is not None
        return found

    def take(self) -> str | None:
        """The oldest admitted message's job, claimed as a worker would."""
        message = cast(str | None, self.redis.rpop(QUEUE))
        if message is None:
            return None
        job_id = str(json.loads(message)["headers"]["id"])
        assert self.worker.claim(job_id, "w1").run
        return job_id

    def finish(self, job_id: str) -> None:
        with self.worker.execution(job_id, "w1", time.monotonic() + 60) as run:
            run.finish(JobStatus.succeeded, result={"text": "ok"})

    def drain(self) -> list[str]:
        """Start and finish every job, one at a time; the order they started in."""
        started: list[str] = []
        while (job_id := self.take()) is not None:
            started.append(job_id)
            self.finish(job_id)
        return started

    def close(self) -> None:
        self.loop.run_until_complete(self.async_redis.aclose())
        self.loop.close()
        self.redis.close()


@pytest.fixture
def line(tmp_path: Path) -> Iterator[Line]:
    with EmbeddedRedis(tmp_path / "valkey") as server:
        created = Line(server.url)
        try:
            yield created
        finally:
            created.close()


def test_a_job_waits_for_a_slot_and_goes_to_the_broker_when_one_frees(line: Line) -> None:
    first = line.create(ServiceTier.default)
    assert line.redis.llen(QUEUE) == 0, "no worker offers a slot: nothing reaches the broker"
    assert line.offer(1) == 1 and line.redis.llen(QUEUE) == 1
    second = line.create(ServiceTier.default)
    assert line.redis.llen(QUEUE) == 1, "one slot: the second waits in the scheduler"
    assert line.redis.hget(keys.job(second), "waiting") == "1"
    assert line.take() == first
    line.finish(first)
    assert line.take() == second  # the finish admitted it


def test_tiers_go_in_order_and_flex_still_advances(line: Line) -> None:
    line.offer(1)
    flex = [line.create(ServiceTier.flex) for _ in range(3)]  # the first takes the free slot at once
    default = [line.create(ServiceTier.default) for _ in range(2)]
    priority = line.create(ServiceTier.priority)
    assert line.drain() == [flex[0], priority, *default, *flex[1:]]

    # Default saturated: flex gets its share (1 admission in 5) rather than waiting for all of default.
    line.offer(1)
    blocker = line.create(ServiceTier.default)
    late_flex = [line.create(ServiceTier.flex) for _ in range(3)]
    many = [line.create(ServiceTier.default) for _ in range(30)]
    order = line.drain()
    assert order[0] == blocker and set(order) == {blocker, *late_flex, *many}
    assert all(order.index(job) < 16 for job in late_flex), [order.index(job) for job in late_flex]


def test_keys_share_a_tier_fairly_by_weight(line: Line) -> None:
    line.offer(1)
    flood = line.create_many(40, ServiceTier.default, "key_a")
    single = line.create(ServiceTier.default, "key_b")
    order = line.drain()
    assert order.index(single) <= 2, "another key's 40 waiting jobs delay its first by at most one turn"
    assert order[0] == flood[0]

    heavy = [line.create(ServiceTier.default, "key_h", weight=3.0) for _ in range(12)]
    light = [line.create(ServiceTier.default, "key_l") for _ in range(12)]
    first_eight = line.drain()[:8]
    assert sum(job in heavy for job in first_eight) == 6 and sum(job in light for job in first_eight) == 2


def test_queue_positions_are_the_order_jobs_start_in(line: Line) -> None:
    line.offer(2)
    line.create(ServiceTier.default)  # running
    line.create(ServiceTier.default)
    jobs = line.create_many(12, ServiceTier.flex, "key_a") + line.create_many(5, ServiceTier.flex, "key_b")
    jobs += [line.create(ServiceTier.default, "key_c") for _ in range(4)]
    jobs.append(line.create(ServiceTier.priority, "key_d"))
    running = [line.take(), line.take()]
    predicted = {job: line.place(job).queue_position for job in jobs}
    for job_id in running:
        assert job_id is not None
        line.finish(job_id)
    order = line.drain()
    assert {job: order.index(job) for job in jobs} == predicted


def test_an_eta_follows_the_measured_service_time(line: Line) -> None:
    line.offer(1)
    jobs = [line.create(ServiceTier.default) for _ in range(4)]
    assert line.place(jobs[1]).estimated_start_seconds is None, "nothing measured yet"
    first = line.take()
    assert first is not None
    time.sleep(0.3)  # the job's service time is what is measured here
    line.finish(first)
    line.take()
    eta = line.place(jobs[3]).estimated_start_seconds
    assert eta is not None and 0.45 <= eta <= 1.2  # two more ahead of it at about 0.3 s each


def test_cancelled_waiting_jobs_leave_the_count_and_are_never_admitted(line: Line) -> None:
    line.offer(1)
    line.create(ServiceTier.default)
    batch = line.create_many(3000, ServiceTier.flex, "key_a")
    later = line.create(ServiceTier.flex, "key_a")
    counts = line.loop.run_until_complete(waiting_counts(line.async_redis, (QUEUE,)))
    assert counts[(QUEUE, "flex")] == 3001
    started = time.monotonic()
    line.loop.run_until_complete(line.store.cancel_many(batch, owner="key_a", queue=QUEUE))
    assert time.monotonic() - started < 5
    counts = line.loop.run_until_complete(waiting_counts(line.async_redis, (QUEUE,)))
    assert counts[(QUEUE, "flex")] == 1
    order = line.drain()
    assert order[-1] == later and not set(order) & set(batch)
    assert line.redis.hget(keys.job(batch[0]), "status") == "cancelled"


@pytest.mark.parametrize(
    ("requested", "policy", "route_default", "expected"),
    [
        (None, {}, None, "default"),
        (None, {}, ServiceTier.priority, "priority"),
        ("auto", {"default_tier": "flex"}, ServiceTier.priority, "flex"),
        ("priority", {"tiers": ["default", "flex"]}, None, "default"),  # not above what the key may use
        ("flex", {"tiers": ["priority", "default", "flex"]}, None, "flex"),
        ("priority", {"tiers": ["flex"], "default_tier": "flex"}, None, "flex"),
        ("flex", {"tiers": ["priority", "default"]}, None, "default"),  # nothing at or below: its default
    ],
)
def test_a_tier_is_resolved_against_the_keys_policy(
    requested: str | None, policy: dict[str, Any], route_default: ServiceTier | None, expected: str
) -> None:
    assert resolve_tier(requested, KeyPolicy(**policy), route_default=route_default) == expected


def test_a_policy_whose_default_it_may_not_use_is_refused() -> None:
    with pytest.raises(ValueError, match="default_tier 'priority' is not among its tiers"):
        KeyPolicy(tiers=["flex"], default_tier="priority")
