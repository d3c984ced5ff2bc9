"""The whole job flow with RabbitMQ as the Celery broker (job state and events stay in Redis).

Runs where a RabbitMQ is reachable at RABBITMQ_URL (e.g. amqp://guest:guest@127.0.0.1:5672//; `.ci/run`
sets it when one answers on this machine), and is skipped, saying so, anywhere else.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.audio import SENTENCES, spoken, wer
from tests.sse import read_events
from tests.stack import private_stack

RABBITMQ_URL = os.environ.get("RABBITMQ_URL")
pytestmark = pytest.mark.skipif(
    not RABBITMQ_URL, reason="RABBITMQ_URL is not set: no RabbitMQ to test the amqp broker against"
)


@pytest.fixture
def rabbit_stack(tmp_path: Path) -> Iterator[str]:
    assert RABBITMQ_URL is not None
    with private_stack(tmp_path, "llm,stt,tts,dialogue", CELERY_BROKER_URL=RABBITMQ_URL) as stack:
        yield stack.url


def test_jobs_flow_through_rabbitmq(rabbit_stack: str) -> None:
    with httpx.Client(base_url=rabbit_stack, timeout=120) as client:
        generate = client.post("/v1/jobs/generate", json={"prompt": "Say hi.", "max_tokens": 8})
        assert generate.status_code == 202, generate.text
        transcribe = client.post("/v1/jobs/transcribe", files={"file": ("fox.wav", spoken("fox"))})
        speak = client.post("/v1/jobs/synthesize", json={"text": "Brokered by RabbitMQ."})
        ids = [generate.json()["id"], transcribe.json()["id"], speak.json()["id"]]
        for job_id in ids:
            events = read_events(client, job_id)
            assert events[-1].json() == {"status": "succeeded"}, job_id
        assert wer(SENTENCES["fox"], client.get(f"/v1/jobs/{ids[1]}/result").json()["text"]) <= 0.15
        assert client.get(f"/v1/jobs/{ids[2]}/result").headers["content-type"] == "audio/wav"
        # The blocking seed endpoint and the OpenAI one go through the same broker.
        assert client.post("/v1/generate", json={"prompt": "Hi", "max_tokens": 4}).status_code == 200
        cancel = client.post("/v1/jobs/generate", json={"prompt": "Count slowly to a thousand.", "max_tokens": 1500})
        assert client.delete(f"/v1/jobs/{cancel.json()['id']}").status_code == 202
        assert read_events(client, cancel.json()["id"])[-1].json() == {"status": "cancelled"}
