"""The Celery app: JSON only, late acks, prefetch 1, one queue per model kind, each task routed by its row of
`tasks/registry.py`."""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from config import Settings
from config.redis_urls import is_sentinel_url, parse_sentinel_url
from tasks.envelope import is_redis_url
from tasks.redis_transport import SENTINEL_TRANSPORT
from tasks.redis_transport import TRANSPORT as REDIS_TRANSPORT
from tasks.registry import QUEUES, ROUTES


def transport_options(settings: Settings) -> dict[str, object]:
    if not is_redis_url(settings.broker_url):
        # RabbitMQ: the queues are durable (kombu's default) and every publish waits for the broker's
        # confirm, so an accepted job's message is on disk before the API answers 202.
        return {"confirm_publish": True}
    return {
        "visibility_timeout": settings.visibility_timeout,
        # Sweep for a dead worker's unacked messages every interval (kombu's default is 10 × 10 s).
        "unacked_restore_interval": settings.broker_restore_interval_seconds,
        "unacked_restore_throttle": 1,
        # The sweep holds a Redis mutex that expires after kombu's 300 s: a worker killed while holding it
        # would delay every redelivery that long. A sweep takes milliseconds; the interval is plenty.
        "unacked_mutex_expire": settings.broker_restore_interval_seconds,
        **sentinel_options(settings.broker_url),
    }


def sentinel_options(url: str) -> dict[str, object]:
    """kombu's Sentinel transport takes the master group's name as a transport option, not from the URL."""
    return {"master_name": parse_sentinel_url(url).master_name} if is_sentinel_url(url) else {}


def broker_for_kombu(url: str) -> tuple[str, str | None]:
    """The broker URL as kombu reads it, and the transport that survives the broker's restart (see
    `tasks/redis_transport.py`), or None for kombu's own choice by the URL's scheme."""
    if is_sentinel_url(url):
        return parse_sentinel_url(url).kombu_url(), SENTINEL_TRANSPORT
    if url.split("://", 1)[0] in {"redis", "valkey"}:
        return url, REDIS_TRANSPORT
    return url, None


def create_celery(settings: Settings) -> Celery:
    broker, transport = broker_for_kombu(settings.broker_url)
    app = Celery("speechq", broker=broker, set_as_current=False)
    if transport is not None:
        app.conf.broker_transport = transport
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in the job store, not a Celery backend
        task_acks_late=True,  # a message is acked only once its job has finished
        # ...and also when its task reports FAILURE (a failed job, already recorded): never redelivered.
        task_acks_on_failure_or_timeout=True,
        task_reject_on_worker_lost=True,  # a pool process that dies gives its message back
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_seconds,
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        task_routes=ROUTES,
        task_default_queue="llm",
        worker_send_task_events=True,  # Flower sees every task's state
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        worker_soft_shutdown_timeout=min(60.0, float(settings.task_time_limit_seconds)),
        worker_enable_soft_shutdown_on_idle=True,
    )
    return app
