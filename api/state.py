"""The resources one API process shares across requests, opened and closed by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from celery import Celery
from redis.asyncio import Redis

from api.auth import KeyRing
from api.limits import RateLimiter
from api.metrics import ApiMetrics
from config import Settings
from jobstore.events import EventHub
from jobstore.files import BatchStore
from jobstore.store import JobStore

if TYPE_CHECKING:  # the service imports the routes' helpers, which import this module
    from api.batches import BatchService


@dataclass(slots=True)
class AppState:
    settings: Settings
    redis: Redis
    celery: Celery
    store: JobStore
    batches: BatchStore
    batch_service: BatchService
    hub: EventHub
    keys: KeyRing
    limiter: RateLimiter
    metrics: ApiMetrics
