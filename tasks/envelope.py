"""Building the broker message for a job, so the API can enqueue it atomically with the job record.

When the broker is the job store's own Redis, the message is pushed by the same Lua script that
creates the job (see `lua/create.lua`). The message is exactly what kombu's Redis transport would
write for `send_task`: Celery's protocol-2 task message, base64-encoded, in kombu's envelope.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from celery import Celery


def is_redis_url(url: str) -> bool:
    return url.split("://", 1)[0] in {"redis", "rediss", "unix", "valkey", "valkeys"}


def redis_message(
    app: Celery, task_name: str, queue: str, task_id: str, kwargs: dict[str, Any], headers: dict[str, str] | None = None
) -> str:
    """The JSON string kombu's Redis transport would LPUSH onto `queue` for this task; `headers` (the
    request id) reach the task as attributes of `task.request`."""
    # argsrepr/kwargsrepr given, so Celery skips its (slow) safe repr of the arguments.
    message = app.amqp.as_task_v2(
        task_id, task_name, args=(), kwargs=kwargs, ignore_result=True, argsrepr="()", kwargsrepr=repr(kwargs)
    )
    task_headers, properties, body, _ = message
    envelope = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {**task_headers, **(headers or {})},
        "properties": {
            **properties,
            "delivery_mode": 2,
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": queue, "routing_key": queue},
        },
    }
    return json.dumps(envelope)
