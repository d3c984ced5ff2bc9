"""The broker message speechq pushes itself is the one Celery would send: built by Celery once per task and
filled in per job (`tasks.envelope.MessageMaker`), it matches Celery's own message for that job."""

from __future__ import annotations

import base64
import json
from typing import Any

from config import Settings
from tasks.celery_app import create_celery
from tasks.envelope import MessageMaker


def celery_message(job_id: str) -> dict[str, Any]:
    app = create_celery(Settings(redis_url="redis://127.0.0.1:1/0"))
    kwargs = {"job_id": job_id}
    headers, properties, body, _ = app.amqp.as_task_v2(
        job_id,
        "speechq.llm.generate",
        args=(),
        kwargs=kwargs,
        ignore_result=True,
        argsrepr="()",
        kwargsrepr=repr(kwargs),
    )
    return {"headers": {**headers, "request_id": "req-1"}, "properties": properties, "body": body}


def test_a_made_message_is_celerys_message_for_that_job() -> None:
    app = create_celery(Settings(redis_url="redis://127.0.0.1:1/0"))
    maker = MessageMaker(app, "speechq.llm.generate", "llm", {"request_id": "req-1"})
    made = [json.loads(maker.make(job_id)) for job_id in ("job_first", "job_second")]
    for message, job_id in zip(made, ("job_first", "job_second"), strict=True):
        expected = celery_message(job_id)
        assert message["headers"] | {"origin": None} == expected["headers"] | {"origin": None}
        assert json.loads(base64.b64decode(message["body"])) == json.loads(json.dumps(expected["body"]))
        properties = message["properties"]
        assert properties["correlation_id"] == job_id and properties["body_encoding"] == "base64"
        assert properties["delivery_info"] == {"exchange": "llm", "routing_key": "llm"}
    assert made[0]["properties"]["delivery_tag"] != made[1]["properties"]["delivery_tag"], "a tag per message"
