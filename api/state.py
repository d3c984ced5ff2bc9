"""The resources one API process shares across requests, opened and closed by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from redis.asyncio import Redis

from api.auth import KeyRing
from api.limits import RateLimiter
from api.metrics import ApiMetrics
from api.webhooks.urls import WebhookPolicy
from config import Settings
from jobstore.batches import BatchStore
from jobstore.event_log import EventHub
from jobstore.files import FileStore
from jobstore.store import JobStore
from jobstore.webhooks import WebhookOutbox


@dataclass(slots=True)
class AppState:
    settings: Settings
    redis: Redis
    celery: Celery
    store: JobStore
    files: FileStore
    batches: BatchStore
    hub: EventHub
    keys: KeyRing
    limiter: RateLimiter
    metrics: ApiMetrics
    webhooks: WebhookPolicy  # which webhook URLs may be called (WEBHOOK_ALLOWED_HOSTS)
    outbox: WebhookOutbox
