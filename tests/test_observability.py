"""Request ids from the API into the worker's logs, Prometheus metrics of API and worker, and Flower."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.audio import spoken as spoken_audio
from tests.conftest import MISSING_MODEL, Stack
from tests.sse import read_events
from tests.stack import SPEECHQ, Process, free_port, wait_until


def log_lines(process: Process) -> list[dict[str, object]]:
    lines = []
    for line in process.log().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and wanted <= ls)


def test_the_request_id_reaches_the_worker_log(client: httpx.Client, stack: Stack) -> None:
    request_id = f"req-{uuid.uuid4().hex[:12]}"
    response = client.post(
        "/v1/jobs/generate", json={"prompt": "Say hi.", "max_tokens": 4}, headers={"X-Request-ID": request_id}
    )
    assert response.headers["X-Request-ID"] == request_id
    job_id = response.json()["id"]
    assert read_events(client, job_id)[-1].json() == {"status": "succeeded"}
    assert client.get(f"/v1/jobs/{job_id}").json()["request_id"] == request_id

    def worker_lines() -> list[dict[str, object]]:
        return [line for line in log_lines(stack.worker) if line.get("job_id") == job_id]

    lines = wait_until(worker_lines, timeout=10, what="the worker's log lines for the job")
    assert all(line["request_id"] == request_id for line in lines)
    assert any(line["owner"] == "anonymous" and "started" in str(line["message"]) for line in lines)
    api_lines = [line for line in log_lines(stack.api) if line.get("request_id") == request_id]
    assert any("POST /v1/jobs/generate 202" in str(line["message"]) for line in api_lines)


def test_api_and_worker_metrics_after_jobs(client: httpx.Client, stack: Stack) -> None:
    generated = client.post("/v1/jobs/generate", json={"prompt": "Count to three.", "max_tokens": 16}).json()["id"]
    spoken = client.post("/v1/jobs/synthesize", json={"text": "Metrics are counted."}).json()["id"]
    heard = client.post("/v1/jobs/transcribe", files={"file": ("a.wav", spoken_audio("fox"))}).json()["id"]
    failing = client.post("/v1/jobs/generate", json={"prompt": "x", "model": MISSING_MODEL}).json()["id"]
    for job_id in (generated, spoken, heard, failing):
        read_events(client, job_id)

    api = samples(client.get("/metrics").text)
    assert value(api, "app_http_requests_total", route="/v1/jobs/generate", status="202") >= 2
    assert value(api, "app_http_request_duration_seconds_count", route="/v1/jobs/{job_id}/events") >= 3
    assert value(api, "app_jobs_created_total", kind="synthesize") >= 1
    assert value(api, "app_queue_workers", queue="tts") == 1
    assert ("app_queue_depth", frozenset({("queue", "llm")})) in api

    worker = samples(httpx.get(f"{stack.metrics_url}/metrics", timeout=10).text)
    assert value(worker, "worker_jobs_total", kind="generate", status="succeeded") >= 1
    assert value(worker, "worker_job_duration_seconds_count", kind="generate", stage="total") >= 1
    assert value(worker, "worker_job_duration_seconds_count", kind="generate", stage="first_token") >= 1
    assert value(worker, "worker_queue_wait_seconds_count", kind="synthesize") >= 1
    assert value(worker, "worker_generated_tokens_total", model="gemma-3-270m") > 0
    assert value(worker, "worker_tokens_per_second_count") >= 1
    assert value(worker, "worker_audio_seconds_total", kind="synthesize", model="hibari") > 0.5
    assert value(worker, "worker_real_time_factor_count", kind="synthesize") >= 1
    assert value(worker, "worker_stt_batch_jobs_count", model="whisper-tiny.en") >= 1
    assert value(worker, "worker_model_load_seconds", model="gemma-3-270m") > 0
    assert value(worker, "worker_job_failures_total", kind="generate", type="model_unavailable") >= 1


@pytest.fixture
def flower(stack: Stack, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {**stack.env, "FLOWER_BASIC_AUTH": "admin:s3cret-flower"}
    process = Process("flower", [*SPEECHQ, "flower", "--port", str(port)], env, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200, timeout=60, what="Flower")
        yield url
    finally:
        process.stop()


def test_flower_lists_the_worker_and_the_finished_task(flower: str, client: httpx.Client) -> None:
    assert httpx.get(f"{flower}/api/workers", timeout=10).status_code == 401, "basic auth is on"
    auth = ("admin", "s3cret-flower")
    job_id = client.post("/v1/jobs/generate", json={"prompt": "Say hi.", "max_tokens": 4}).json()["id"]
    read_events(client, job_id)

    def finished_task() -> dict[str, object] | None:
        tasks = httpx.get(f"{flower}/api/tasks", auth=auth, timeout=10).json()
        task = tasks.get(job_id)
        return task if task and task.get("state") == "SUCCESS" else None

    task = wait_until(finished_task, timeout=30, interval=0.5, what="the task in Flower")
    assert task["name"] == "speechq.llm.generate"
    workers = wait_until(
        lambda: httpx.get(f"{flower}/api/workers?refresh=1", auth=auth, timeout=20).json(), timeout=30, what="workers"
    )
    assert any(name.startswith("speechq-") for name in workers)
