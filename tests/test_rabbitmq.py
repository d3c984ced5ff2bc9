"""The whole job flow with RabbitMQ as the Celery broker (job state and events stay in Redis).

Runs where a RabbitMQ is reachable at RABBITMQ_URL (e.g. amqp://guest:guest@127.0.0.1:5672//; `.ci/run`
sets it when one answers on this machine), and is skipped, saying so, anywhere else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.embedded_redis import EmbeddedRedis
from tests.audio import SENTENCES, spoken, wer
from tests.sse import read_events
from tests.stack import base_env, private_stack, start_api, start_worker, wait_for_worker, wait_until

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
        # The original blocking endpoint and the OpenAI one go through the same broker.
        assert client.post("/v1/generate", json={"prompt": "Hi", "max_tokens": 4}).status_code == 200
        cancel = client.post("/v1/jobs/generate", json={"prompt": "Count slowly to a thousand.", "max_tokens": 1500})
        assert client.delete(f"/v1/jobs/{cancel.json()['id']}").status_code == 202
        assert read_events(client, cancel.json()["id"])[-1].json() == {"status": "cancelled"}


def rabbitmqctl(command: str) -> None:
    subprocess.run(["rabbitmqctl", command], check=True, capture_output=True, timeout=120)


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="no rabbitmqctl here to restart the RabbitMQ with")
def test_a_worker_outlives_a_rabbitmq_restart(tmp_path: Path) -> None:
    """The broker application stopped mid-generation and started again 5 s later, under a single-queue worker
    that nobody restarts: the running job ends, and the next job runs on the same process."""
    assert RABBITMQ_URL is not None
    with EmbeddedRedis(tmp_path / "valkey") as redis_server:
        env = base_env(redis_server.url, tmp_path, CELERY_BROKER_URL=RABBITMQ_URL, JOB_LEASE_SECONDS="2")
        worker = start_worker(env, tmp_path, queues="llm")
        api, url = start_api(env, tmp_path)
        try:
            wait_for_worker(url, worker)
            with httpx.Client(base_url=url, timeout=30) as client:
                body = {"prompt": "Once upon a time", "max_tokens": 300, "temperature": 0.7}
                job = client.post("/v1/jobs/completion", json=body).json()["id"]
                wait_until(
                    lambda: client.get(f"/v1/jobs/{job}").json()["status"] == "running", what="the job under way"
                )
                rabbitmqctl("stop_app")
                try:
                    time.sleep(5.0)  # the scenario: the broker stays away, not a wait on something
                finally:
                    rabbitmqctl("start_app")
                final = wait_until(
                    lambda: (j := client.get(f"/v1/jobs/{job}").json())["status"] in ("succeeded", "failed") and j,
                    timeout=90,
                    what="the job to end after the restart",
                )
                assert final["status"] == "succeeded", final
                assert [e.event for e in read_events(client, job)].count("result") == 1
                after = client.post("/v1/jobs/completion", json={"prompt": "Hello", "max_tokens": 4}).json()["id"]
                assert wait_until(
                    lambda: client.get(f"/v1/jobs/{after}").json()["status"] == "succeeded", timeout=90, what="next"
                )
            assert worker.alive(), "nobody restarts this worker: it must have lived through the restart"
            assert "Connection to broker lost" in worker.log()
        finally:
            api.stop()
            worker.stop()
