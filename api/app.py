"""`create_app(settings)`: the FastAPI application, its lifespan and its routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from api.auth import KeyRing
from api.batch_service import BatchService
from api.batch_sweeper import BatchSweeper
from api.deps import OPEN_PATHS, AccessGate
from api.errors import install_error_handlers
from api.limits import RateLimiter
from api.metrics import ApiMetrics, MetricsMiddleware
from api.openai import audio as openai_audio
from api.openai import serving as openai_serving
from api.openai import speech as openai_speech
from api.request_id import RequestIdMiddleware
from api.routes import (
    batches,
    console,
    dialogue,
    files,
    generation,
    health,
    jobs,
    models,
    realtime,
    synthesis,
    transcription,
)
from api.state import AppState
from api.uploads import BodyLimitMiddleware, upload_limit_bytes
from api.webhooks.delivery import WebhookDeliverer
from api.webhooks.urls import WebhookPolicy
from config import Settings, get_settings
from config.redis_urls import async_client
from config.settings import SettingsError
from contract.catalog import Registry, use_registry
from jobstore.batches import BatchStore
from jobstore.event_log import EventHub
from jobstore.files import FileStore
from jobstore.store import JobStore
from jobstore.webhooks import WebhookOutbox
from tasks.celery_app import create_celery


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if settings.redis_url is None:
        raise SettingsError("REDIS_URL is not set: start everything with `speechq up`, or point REDIS_URL at Redis")
    use_registry(Registry.load(settings))  # only these models are served; SettingsError names a bad entry
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = async_client(
            settings.redis_url or "",
            decode_responses=True,
            socket_connect_timeout=2.0,
            socket_timeout=10.0,
            health_check_interval=30,
            max_connections=512,
        )
        raw = async_client(settings.redis_url or "", socket_connect_timeout=2.0, socket_timeout=30.0)
        celery = create_celery(settings)
        hub = EventHub(redis)
        await hub.start()
        store = JobStore(
            redis,
            raw,
            celery,
            ttl=settings.job_ttl_seconds,
            max_queue_depth=settings.queue_max_depth,
            max_active=settings.max_active_jobs_per_key,
        )
        file_store = FileStore(redis, raw, ttl=settings.job_ttl_seconds)
        batch_store = BatchStore(redis, ttl=settings.job_ttl_seconds)
        batch_service = BatchService(store, file_store, batch_store, settings)
        sweeper = BatchSweeper(batch_service, settings.batch_sweep_interval_seconds)
        policy = WebhookPolicy(settings.webhook_allowed_hosts)
        outbox = WebhookOutbox(redis)
        deliverer = WebhookDeliverer(outbox, policy, settings, metrics)
        app.state.speechq = AppState(
            settings=settings,
            redis=redis,
            celery=celery,
            store=store,
            files=file_store,
            batches=batch_store,
            hub=hub,
            keys=KeyRing(settings),
            limiter=RateLimiter(redis, settings),
            metrics=metrics,
            webhooks=policy,
            outbox=outbox,
        )
        sweeper.start()
        if policy.enabled:  # webhooks off: events queued before wait in the outbox (app_webhook_oldest_pending_seconds)
            deliverer.start()
        try:
            yield
        finally:
            await deliverer.stop()
            await sweeper.stop()
            await hub.stop()
            await redis.aclose()
            await raw.aclose()

    app = FastAPI(
        title="speechq",
        summary="Queue-based speech and language inference",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # `api/routes/console.py` serves the docs from the package's files, not a CDN
    )
    install_error_handlers(app)
    for module in (jobs, generation, transcription, synthesis, dialogue, files, batches, models):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    app.include_router(health.router)
    app.include_router(realtime.router)
    app.include_router(openai_serving.router, responses=ERROR_RESPONSES)
    app.include_router(openai_audio.router, responses=ERROR_RESPONSES)
    app.include_router(openai_speech.router, responses=ERROR_RESPONSES)
    app.include_router(console.router)
    app.include_router(jobs.fallback)
    # The interactive docs and the console hold no secret (a key is typed into the page): they stay open.
    docs = {app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url}
    open_paths = OPEN_PATHS | console.OPEN_PATHS | {path for path in docs if path}
    if settings.api_key_enabled:
        keyed = {"/metrics"} if settings.metrics_require_key else set()
        declare_api_keys(app, settings.api_key_header_name, unkeyed=open_paths - keyed)
    app.add_middleware(BodyLimitMiddleware, max_bytes=upload_limit_bytes(settings))
    app.add_middleware(
        AccessGate, open_paths=open_paths, open_prefixes=console.OPEN_PREFIXES
    )  # outside the body cap: a refused caller learns no limit
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware, header=settings.request_id_header)
    return app


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class ErrorEnvelope(BaseModel):
    """Every error the API answers, in OpenAI's envelope (`api.errors.envelope`), and beside it the message
    again as `detail`, which the original API's clients read."""

    error: ErrorDetail
    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorEnvelope(BaseModel):
    """A 422: `detail` is FastAPI's list of the fields that failed when the body did not validate, else the
    message (as on every other error)."""

    error: ErrorDetail
    detail: list[FieldError] | str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorEnvelope,
        "description": "A body that is not JSON (or not UTF-8), or a bad request the "
        "original API answered 400 (`bad_request`, `context_length_exceeded`, `invalid_audio`…)",
    },
    401: {"model": ErrorEnvelope, "description": "Missing or invalid API key (`invalid_api_key`)"},
    403: {"model": ErrorEnvelope, "description": "A wrong key on the original API's routes, as it answered"},
    404: {"model": ErrorEnvelope, "description": "No such job, file, batch or model, or another key's"},
    409: {"model": ErrorEnvelope, "description": "The job is not in a state for this (cancelled, not finished)"},
    413: {"model": ErrorEnvelope, "description": "An upload, a request or the key's storage over its limit"},
    415: {"model": ErrorEnvelope, "description": "An upload that is not audio of an accepted kind"},
    422: {"model": ValidationErrorEnvelope, "description": "A bad field, named in `error.param`"},
    429: {"model": ErrorEnvelope, "description": "Rate limit or active-job quota exceeded; see `Retry-After`"},
    502: {"model": ErrorEnvelope, "description": "A remote engine (OpenAudio, OpenAI) failed (`upstream_error`)"},
    503: {
        "model": ErrorEnvelope,
        "description": "Redis or the broker unreachable, or the queue full; see `Retry-After`",
    },
    504: {"model": ErrorEnvelope, "description": "A blocking route's job did not finish in time, or expired queued"},
    507: {"model": ErrorEnvelope, "description": "The job store (Redis) is full; see `Retry-After`"},
}


def declare_api_keys(app: FastAPI, header: str, *, unkeyed: frozenset[str]) -> None:
    """Put the two ways to send a key (the configured header, `Authorization: Bearer`) in the OpenAPI
    schema, required on every operation but those of `unkeyed`: the same paths `AccessGate` lets through."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = FastAPI.openapi(app)  # builds and caches app.openapi_schema; completed here once
        schema.setdefault("components", {})["securitySchemes"] = {
            "APIKeyHeader": {"type": "apiKey", "in": "header", "name": header},
            "BearerAuth": {"type": "http", "scheme": "bearer"},
        }
        for path, operations in schema.get("paths", {}).items():
            if path not in unkeyed:
                for operation in operations.values():
                    operation["security"] = [{"APIKeyHeader": []}, {"BearerAuth": []}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
