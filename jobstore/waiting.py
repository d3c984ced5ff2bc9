"""Reading the scheduler's structures (`tasks/lua/schedule.lua`): a queued job's place in line and ETA, and
how many jobs wait per queue and tier. The policy and its arithmetic are `tasks/scheduler.py`'s."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from contract.jobs import ServiceTier
from jobstore import keys
from tasks.scheduler import ORDER, TIER_WEIGHT, estimated_start, turns_before


@dataclass(frozen=True, slots=True)
class Place:
    queue_position: int  # jobs that will start before this one under the current policy
    estimated_start_seconds: float | None  # None until the queue has a measured service time and a worker


async def place(redis: Redis, job_id: str) -> Place | None:
    """Where a queued job stands, or None when it is not queued."""
    job = cast(dict[str, str], await redis.hgetall(keys.job(job_id)))
    if job.get("status") != "queued" or "queue" not in job:
        return None
    queue = job["queue"]
    pipe = redis.pipeline(transaction=False)
    pipe.llen(queue)
    pipe.hgetall(keys.sched(queue, "slots"))
    pipe.scard(keys.sched(queue, "inflight"))
    pipe.hget(keys.sched(queue, "service"), "mean")
    pipe.time()
    length, slots_raw, inflight, mean, (seconds, micros) = await pipe.execute()
    now = float(seconds) + micros / 1e6
    slots = sum(int(n) for n, expires in (v.split() for v in slots_raw.values()) if float(expires) >= now)
    ahead = int(length)  # admitted, still on the broker's list
    if job.get("waiting") == "1":
        ahead += await _waiting_ahead(redis, queue, job)
    else:
        ahead = min(ahead, max(0, int(inflight) - 1))  # admitted itself: only those admitted before it
    eta = estimated_start(ahead, slots=slots, inflight=int(inflight), mean_service=float(mean or 0))
    return Place(queue_position=ahead, estimated_start_seconds=None if eta is None else round(eta, 3))


async def _waiting_ahead(redis: Redis, queue: str, job: dict[str, str]) -> int:
    """The admissions the two-level rule makes before this waiting job's."""
    tier = ServiceTier(job.get("tier") or "default")
    principal = job.get("principal") or ""
    index = await redis.lpos(keys.sched(queue, f"{tier}:p:{principal}"), job["id"])
    if index is None:
        return 0
    flows = dict(
        cast(list[tuple[str, float]], await redis.zrange(keys.sched(queue, f"{tier}:flows"), 0, -1, withscores=True))
    )
    weights = cast(dict[str, str], await redis.hgetall(keys.sched(queue, f"{tier}:weights")))
    others = [other for other in flows if other != principal]
    pipe = redis.pipeline(transaction=False)
    for other in others:
        pipe.llen(keys.sched(queue, f"{tier}:p:{other}"))
    pipe.zrange(keys.sched(queue, "tiers"), 0, -1, withscores=True)
    pipe.hgetall(keys.sched(queue, "waiting"))
    found: list[Any] = await pipe.execute()
    lengths, tiers_raw, waiting = found[:-2], cast(list[tuple[str, float]], found[-2]), cast(dict[str, str], found[-1])
    position = cast(int, index)
    mark = flows.get(principal, 0.0) + position / float(weights.get(principal, "1"))
    within = position
    for other, length in zip(others, lengths, strict=True):
        weight = float(weights.get(other, "1"))
        within += turns_before(mark, flows[other], weight, int(length), ties_first=other < principal)
    passes = {member.split(":", 1)[1]: score for member, score in tiers_raw}
    tier_mark = passes.get(tier.value, 0.0) + within / TIER_WEIGHT[tier]
    ahead = within
    for other_tier in ServiceTier:
        if other_tier == tier or other_tier.value not in passes:
            continue
        ahead += turns_before(
            tier_mark,
            passes[other_tier.value],
            TIER_WEIGHT[other_tier],
            int(waiting.get(other_tier.value, "0")),
            ties_first=ORDER.index(other_tier) < ORDER.index(tier),
        )
    return ahead


async def waiting_counts(redis: Redis, queues: tuple[str, ...]) -> dict[tuple[str, str], int]:
    """Jobs waiting in the scheduler per (queue, tier): what no broker list shows."""
    pipe = redis.pipeline(transaction=False)
    for queue in queues:
        pipe.hgetall(keys.sched(queue, "waiting"))
    found = cast(list[dict[str, str]], await pipe.execute())
    return {
        (queue, tier.value): max(0, int(waiting.get(tier.value, "0")))
        for queue, waiting in zip(queues, found, strict=True)
        for tier in ServiceTier
    }
