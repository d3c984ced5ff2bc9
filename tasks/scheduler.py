"""The scheduler: which waiting job goes to the broker next, how many wait, and when each will start.

Policy
------
Jobs do not go straight onto their Celery queue. Each waits in the job store (`lua/schedule.lua`), and is
*admitted* to the broker when a worker slot of its queue frees: the broker never holds more of a queue's
jobs than its live workers have slots (`LLM_PARALLEL` per `llm` worker, one per speech engine,
`DIALOGUE_CONCURRENCY` per dialogue worker). So a job that arrives later but ranks higher is never stuck
behind a long line already handed to Celery; it waits at most for the first slot to free. Nothing that
runs is pre-empted.

Which waiting job is admitted is decided at two levels, by the same rule, stride scheduling (a weighted
round-robin that serves each party in proportion to its weight, whatever else is waiting):

1. **Between tiers** (`service_tier`: priority, default, flex; weights 16 : 4 : 1). The tier with the
   lowest *pass* goes next; each admission moves its tier's pass on by 1 / weight. A tier with nothing
   waiting joins at the pass last served, so it goes first on its next turn: a waiting `priority` job
   starts before any waiting `default` one, and that before any `flex`, unless the higher tier has kept
   every slot busy for a while. Then the lower tiers still advance, at no less than their weight's share
   (flex: 1 admission in 21 while both higher tiers are saturated; default: 4 in 20 against priority).
   Nothing starves, and a batch cannot age its way in front of interactive work.
2. **Between principals within a tier** (API keys; without keys everyone is one principal): the same,
   with each key's weight (`API_KEY_POLICIES`, default 1). A key's 1,000 waiting jobs delay another key's
   first job by at most one admission per slot.

Within one principal of one tier, jobs go in the order they came.

Position and ETA
----------------
`queue_position` counts the jobs that will start before this one if nothing else arrives: the jobs
already admitted and not started, plus the picks the two-level rule makes before this job's turn (for
each other principal and tier, the turns whose pass falls below this job's, capped by what it has
waiting). `estimated_start_seconds` is the time for that many jobs to start at the queue's measured rate:
(position + 1 - free slots) x the queue's mean service time (an exponential average of its jobs' run
times) / its slots, and 0 when a slot is free for it.
"""

from __future__ import annotations

import math

from config import KeyPolicy
from contract.jobs import ServiceTier

TIER_WEIGHT: dict[ServiceTier, int] = {ServiceTier.priority: 16, ServiceTier.default: 4, ServiceTier.flex: 1}
# Rank first, so that equal passes go to the higher tier (a sorted set orders ties by member).
TIER_MEMBER: dict[ServiceTier, str] = {tier: f"{rank}:{tier.value}" for rank, tier in enumerate(ServiceTier, start=1)}
ORDER = tuple(ServiceTier)  # highest first


def lua_constants() -> str:
    """TIER_WEIGHT and TIER_MEMBER for `lua/schedule.lua`."""
    weights = ", ".join(f"{tier.value} = {weight}" for tier, weight in TIER_WEIGHT.items())
    members = ", ".join(f"{tier.value} = '{member}'" for tier, member in TIER_MEMBER.items())
    return f"local TIER_WEIGHT = {{{weights}}}\nlocal TIER_MEMBER = {{{members}}}\n"


def resolve_tier(requested: str | None, policy: KeyPolicy, *, route_default: ServiceTier | None = None) -> ServiceTier:
    """The tier a job runs at: what the request asked (`auto`: the key's default; unset: the route's default,
    else the key's), lowered to the highest tier the key may use that is not above it."""
    if requested is None:
        wanted = route_default or ServiceTier(policy.default_tier)
    elif requested == "auto":
        wanted = ServiceTier(policy.default_tier)
    else:
        wanted = ServiceTier(requested)
    allowed = [ServiceTier(tier) for tier in policy.tiers]
    for tier in ORDER[ORDER.index(wanted) :]:
        if tier in allowed:
            return tier
    return ServiceTier(policy.default_tier)  # asked below everything it may use: its default


def turns_before(mark: float, start: float, weight: float, available: int, *, ties_first: bool) -> int:
    """How many of a party's next `available` turns (at passes start, start + 1/weight, …) come before the
    turn at pass `mark`; `ties_first`: the party wins a tie (a higher tier, or a principal named earlier)."""
    if available <= 0:
        return 0
    span = (mark - start) * weight
    count = math.floor(span + 1e-9) + 1 if ties_first else math.ceil(span - 1e-9)
    return max(0, min(available, count))


def estimated_start(ahead: int, *, slots: int, inflight: int, mean_service: float) -> float | None:
    """Seconds until a job with `ahead` jobs before it starts: 0 when a slot is free for it, else the time
    for the rest to start at the queue's rate (slots / mean service time); None when nothing is measured
    yet or no worker serves the queue."""
    free = max(0, slots - inflight)
    if ahead < free:
        return 0.0
    if slots == 0 or mean_service <= 0:
        return None
    return (ahead + 1 - free) * mean_service / slots
