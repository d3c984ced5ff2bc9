"""What the console's Workers view and `GET /v1/queues` show: per queue, its workers' slots, the jobs running
and waiting (per tier, and per principal for an operator); per worker, its slots and the jobs it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis

from contract.jobs import ServiceTier
from jobstore import keys
from jobstore.waiting import waiting_counts


@dataclass(frozen=True, slots=True)
class QueueLoad:
    queue: str
    slots: int  # what its live workers offer
    running: int  # its jobs running (or being cancelled) now
    admitted: int  # jobs on the broker's list, admitted and not yet taken by a worker
    waiting: dict[str, int]  # per tier, in the scheduler
    principals: dict[str, int] = field(default_factory=dict)  # per principal, waiting (only when asked)


async def queue_loads(redis: Redis, queues: tuple[str, ...], *, by_principal: bool) -> list[QueueLoad]:
    """Each queue's load, read now. `by_principal`: also who waits, per principal (an operator's view)."""
    waiting = await waiting_counts(redis, queues)
    running = await _running(redis)
    pipe = redis.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue)
        pipe.hgetall(keys.sched(queue, "slots"))
    pipe.time()
    found: list[Any] = await pipe.execute()
    seconds, micros = found[-1]
    now = float(seconds) + micros / 1e6
    loads = []
    for index, queue in enumerate(queues):
        admitted, slots = int(found[2 * index]), _live_slots(cast(dict[str, str], found[2 * index + 1]), now)
        principals = await _principals(redis, queue) if by_principal else {}
        loads.append(
            QueueLoad(
                queue=queue,
                slots=sum(slots.values()),
                running=sum(1 for _, job_queue in running if job_queue == queue),
                admitted=admitted,
                waiting={tier.value: waiting[(queue, tier.value)] for tier in ServiceTier},
                principals=principals,
            )
        )
    return loads


async def worker_loads(redis: Redis, queues: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Per worker id: the slots it offers (all its queues) and the jobs it is running now."""
    pipe = redis.pipeline(transaction=False)
    for queue in queues:
        pipe.hgetall(keys.sched(queue, "slots"))
    pipe.time()
    found: list[Any] = await pipe.execute()
    seconds, micros = found[-1]
    now = float(seconds) + micros / 1e6
    offered: dict[str, int] = {}
    for slots in found[:-1]:
        for worker, count in _live_slots(cast(dict[str, str], slots), now).items():
            offered[worker] = offered.get(worker, 0) + count
    busy: dict[str, int] = {}
    for worker, _ in await _running(redis):
        busy[worker] = busy.get(worker, 0) + 1
    return {worker: (offered.get(worker, 0), busy.get(worker, 0)) for worker in offered.keys() | busy.keys()}


async def _running(redis: Redis) -> list[tuple[str, str]]:
    """(worker, queue) of every job running now: those with a lease (`keys.LEASES`)."""
    job_ids = cast(list[str], await redis.zrange(keys.LEASES, 0, -1))
    pipe = redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(keys.job(job_id), ["status", "worker", "queue"])
    rows = cast(list[list[str | None]], await pipe.execute())
    return [(worker or "", queue or "") for status, worker, queue in rows if status in ("running", "cancelling")]


async def queue_jobs(redis: Redis, queues: tuple[str, ...]) -> dict[tuple[str, str], int]:
    """Per (queue, state), the work an autoscaler sees: `waiting` in the scheduler, `admitted` (on the broker's
    list, or taken by a worker that has not started it yet: what the list's length leaves out) and `running`."""
    waiting = await waiting_counts(redis, queues)
    pipe = redis.pipeline(transaction=False)
    for queue in queues:
        pipe.smembers(keys.sched(queue, "inflight"))
    inflight = cast(list[set[str]], await pipe.execute())
    for members in inflight:
        for job_id in members:
            pipe.hget(keys.job(job_id), "status")
    statuses = iter(cast(list[str | None], await pipe.execute()))
    counts: dict[tuple[str, str], int] = {}
    for queue, members in zip(queues, inflight, strict=True):
        found = [next(statuses) for _ in members]
        counts[(queue, "waiting")] = sum(count for (q, _), count in waiting.items() if q == queue)
        counts[(queue, "admitted")] = sum(status == "queued" for status in found)
        counts[(queue, "running")] = sum(status in ("running", "cancelling") for status in found)
    return counts


def _live_slots(slots: dict[str, str], now: float) -> dict[str, int]:
    live = {}
    for worker, value in slots.items():
        count, _, expires = value.partition(" ")
        if expires and float(expires) >= now:
            live[worker] = int(count)
    return live


async def _principals(redis: Redis, queue: str) -> dict[str, int]:
    """Jobs waiting per principal, over every tier (a cancelled job counts until the scheduler reaches it)."""
    members: list[tuple[str, str]] = []
    for tier in ServiceTier:
        for principal in cast(list[str], await redis.zrange(keys.sched(queue, f"{tier.value}:flows"), 0, -1)):
            members.append((tier.value, principal))
    pipe = redis.pipeline(transaction=False)
    for name, principal in members:
        pipe.llen(keys.sched(queue, f"{name}:p:{principal}"))
    counts: dict[str, int] = {}
    for (_, principal), length in zip(members, cast(list[int], await pipe.execute()), strict=True):
        counts[principal] = counts.get(principal, 0) + int(length)
    return {principal: count for principal, count in sorted(counts.items()) if count}
