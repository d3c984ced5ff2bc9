"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from api.deps import StateDep, authenticate
from jobstore.adverts import live_workers
from jobstore.overview import queue_jobs
from jobstore.waiting import waiting_counts
from tasks.envelope import is_redis_url
from tasks.registry import QUEUES

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/health")
async def health(state: StateDep) -> dict[str, str | bool]:
    """Alive; and whether requests need an API key (any 401 says as much), so the console asks for one
    before it sends a request that could only be refused."""
    return {"status": "ok", "api_key_required": state.settings.api_key_enabled}


@router.get("/ready")
async def ready(state: StateDep) -> JSONResponse:
    """Ready when Redis answers and every queue has at least one live worker."""
    body: dict[str, Any] = {"redis": "ok", "queues": {}}
    try:
        await state.redis.ping()
        workers = await live_workers(state.redis)
    except RedisError as exc:
        log.error("readiness: Redis unreachable: %s", exc)  # the address it tried stays in the log
        return JSONResponse({"status": "unavailable", "redis": "unreachable"}, status_code=503)
    for queue in QUEUES:
        serving = [w.id for w in workers if queue in w.queues and not w.draining]  # a draining one takes nothing
        body["queues"][queue] = {"workers": len(serving), "depth": await state.redis.llen(queue)}
    ok = all(q["workers"] > 0 for q in body["queues"].values())
    body["status"] = "ready" if ok else "degraded"
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus' text format"}},
)
async def metrics(request: Request, state: StateDep) -> Response:
    """Prometheus text format; queue depth and live workers per queue are read from Redis now."""
    if state.settings.metrics_require_key:
        await authenticate(request, state)
    workers = await live_workers(state.redis)
    redis_broker = is_redis_url(state.settings.broker_url)
    waiting = await waiting_counts(state.redis, QUEUES)
    for (queue, tier), count in waiting.items():
        state.metrics.jobs_waiting.labels(queue, tier).set(count)
    for (queue, job_state), count in (await queue_jobs(state.redis, QUEUES)).items():
        state.metrics.queue_jobs.labels(queue, job_state).set(count)
    for queue in QUEUES:
        state.metrics.queue_workers.labels(queue).set(sum(queue in w.queues and not w.draining for w in workers))
        if redis_broker:  # with RabbitMQ the depth is RabbitMQ's to report
            depth = await state.redis.llen(queue)
            state.metrics.queue_depth.labels(queue).set(depth)
            state.metrics.jobs_waiting.labels(queue, "admitted").set(depth)
    state.metrics.webhook_oldest_pending.set(await state.outbox.oldest_pending_age())
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
