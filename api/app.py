"""`create_app(settings)`: the FastAPI application, its lifespan and its routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis

from api.auth import KeyRing
from api.errors import install_error_handlers
from api.limits import RateLimiter
from api.metrics import ApiMetrics, MetricsMiddleware
from api.openai import audio as openai_audio
from api.openai import serving as openai_serving
from api.openai import speech as openai_speech
from api.request_id import RequestIdMiddleware
from api.routes import batches, dialogue, generation, health, jobs, models, synthesis, transcription
from api.state import AppState
from api.uploads import BodyLimitMiddleware, upload_limit_bytes
from config import Settings, get_settings
from config.settings import SettingsError
from tasks.batches import BatchStore
from tasks.celery_app import create_celery
from tasks.events import EventHub
from tasks.store import JobStore


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if settings.redis_url is None:
        raise SettingsError("REDIS_URL is not set: start everything with `speechq up`, or point REDIS_URL at Redis")
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = Redis.from_url(
            settings.redis_url or "",
            decode_responses=True,
            socket_connect_timeout=2.0,
            socket_timeout=10.0,
            health_check_interval=30,
            max_connections=512,
        )
        raw = Redis.from_url(settings.redis_url or "", socket_connect_timeout=2.0, socket_timeout=30.0)
        celery = create_celery(settings)
        hub = EventHub(redis)
        await hub.start()
        app.state.speechq = AppState(
            settings=settings,
            redis=redis,
            celery=celery,
            store=JobStore(
                redis,
                raw,
                celery,
                ttl=settings.job_ttl_seconds,
                max_queue_depth=settings.queue_max_depth,
                max_active=settings.max_active_jobs_per_key,
            ),
            batches=BatchStore(redis, raw, ttl=settings.job_ttl_seconds),
            hub=hub,
            keys=KeyRing(settings),
            limiter=RateLimiter(redis, settings),
            metrics=metrics,
        )
        try:
            yield
        finally:
            await hub.stop()
            await redis.aclose()
            await raw.aclose()

    app = FastAPI(
        title="speechq",
        summary="Queue-based speech and language inference",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for module in (jobs, generation, transcription, synthesis, dialogue, batches, models, health):
        app.include_router(module.router)
    app.include_router(openai_serving.router)
    app.include_router(openai_audio.router)
    app.include_router(openai_speech.router)
    app.include_router(jobs.fallback)
    app.add_middleware(BodyLimitMiddleware, max_bytes=upload_limit_bytes(settings))
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware, header=settings.request_id_header)
    return app
