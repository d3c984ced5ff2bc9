"""Live workers advertise themselves in Redis: which queues they serve, on which device, with which models."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio import Redis

from jobstore import keys


@dataclass(slots=True)
class WorkerInfo:
    id: str
    hostname: str
    pid: int
    queues: list[str]
    device: str | None
    models: list[str] = field(default_factory=list)
    started_at: float = 0.0
    cuda_visible_devices: str | None = None  # as the worker process itself sees it
    metrics_port: int | None = None
    heartbeat_at: float = 0.0  # when it last advertised itself (every WORKER_HEARTBEAT_SECONDS)
    draining: bool = False  # taking no more jobs (`workers/drain.py`)


def advertise(redis: SyncRedis, info: WorkerInfo, ttl: float) -> None:
    redis.set(keys.worker(info.id), json.dumps(asdict(info)), px=int(ttl * 1000))


def withdraw(redis: SyncRedis, worker_id: str) -> None:
    redis.delete(keys.worker(worker_id))


async def live_workers(redis: Redis) -> list[WorkerInfo]:
    names = [name async for name in redis.scan_iter(match=keys.WORKER_PATTERN, count=500)]
    if not names:
        return []
    values: list[Any] = await redis.mget(names)
    known = set(WorkerInfo.__dataclass_fields__)
    found = [json.loads(value) for value in values if value]
    return [WorkerInfo(**{k: v for k, v in info.items() if k in known}) for info in found]
