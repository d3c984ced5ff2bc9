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
    return url.split("://", 1)[0] in {"redis", "rediss", "unix", "valkey", "valkeys", "sentinel"}


def redis_message(
    app: Celery, task_name: str, queue: str, task_id: str, kwargs: dict[str, Any], headers: dict[str, str] | None = None
) -> str:
    """The JSON string kombu's Redis transport would LPUSH onto `queue` for this task; `headers` (the
    request id) reach the task as attributes of `task.request`."""
    return MessageMaker(app, task_name, queue, headers, kwargs=kwargs).make(task_id)


class MessageMaker:
    """`redis_message` for many tasks of one name, queue and headers (a batch's lines): Celery builds the
    message once, with a placeholder for the task id, and each task's is that text with its id, its body
    and a fresh delivery tag put in. Some 20x faster than asking Celery each time."""

    PLACEHOLDER = "@@speechq-task-id@@"

    def __init__(
        self,
        app: Celery,
        task_name: str,
        queue: str,
        headers: dict[str, str] | None = None,
        *,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        # The task's kwargs name its id ({"job_id": id}) unless given otherwise.
        self.kwargs = {"job_id": self.PLACEHOLDER} if kwargs is None else kwargs
        # argsrepr/kwargsrepr given, so Celery skips its (slow) safe repr of the arguments.
        message = app.amqp.as_task_v2(
            self.PLACEHOLDER,
            task_name,
            args=(),
            kwargs=self.kwargs,
            ignore_result=True,
            argsrepr="()",
            kwargsrepr=repr(self.kwargs),
        )
        task_headers, properties, body, _ = message
        self._body = json.dumps(body)
        envelope = {
            "body": "@@speechq-body@@",
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {**task_headers, **(headers or {})},
            "properties": {
                **properties,
                "delivery_mode": 2,
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": "@@speechq-tag@@",
                "delivery_info": {"exchange": queue, "routing_key": queue},
            },
        }
        self._envelope = json.dumps(envelope)

    def make(self, task_id: str) -> str:
        body = base64.b64encode(self._body.replace(self.PLACEHOLDER, task_id).encode()).decode()
        text = self._envelope.replace("@@speechq-body@@", body).replace("@@speechq-tag@@", str(uuid.uuid4()))
        return text.replace(self.PLACEHOLDER, task_id)
