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
from jobstore.batches import BatchStore
from jobstore.event_log import EventHub
from jobstore.files import FileStore
from jobstore.store import JobStore

if TYPE_CHECKING:  # the service imports `api.submit` (quotas, job failures), which imports this module
    from api.batch_service import BatchService


@dataclass(slots=True)
class AppState:
    settings: Settings
    redis: Redis
    celery: Celery
    store: JobStore
    files: FileStore
    batches: BatchStore
    batch_service: BatchService
    hub: EventHub
    keys: KeyRing
    limiter: RateLimiter
    metrics: ApiMetrics
