"""Flower tells the truth: a real `speechq flower` (with a login) beside a private Valkey, API and worker
reports a succeeded job SUCCESS, a failed one FAILURE with its error type, and one cancelled while running
REVOKED; one cancelled while it waited for a slot never reached Celery, so Flower has no task for it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from celery.exceptions import Ignore
from redis import Redis

from cli.embedded_redis import EmbeddedRedis
from config import load_settings
from jobstore import keys
from tests.conftest import MISSING_MODEL
from tests.sse import read_events
from tests.stack import SPEECHQ, Process, base_env, free_port, start_api, start_worker, wait_for_worker, wait_until
from workers.celery_tasks import JobFailed, JobRunner
from workers.execution import WorkerStore

AUTH = ("operator", "flower-test-login")
ENDED = ("succeeded", "failed", "cancelled", "expired")


@contextmanager
def running_flower(env: dict[str, str], folder: Path) -> Iterator[str]:
    port = free_port()
    process = Process("flower", [*SPEECHQ, "flower", "--port", str(port)], env, folder)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not process.alive():
            raise RuntimeError(f"Flower exited:\n{process.log()}")
        return httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200

    try:
        wait_until(up, timeout=60, what="Flower")
        yield url
    finally:
        process.stop()


def submit(client: httpx.Client, **body: object) -> str:
    response = client.post("/v1/jobs/generate", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def job_in(client: httpx.Client, job_id: str, statuses: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    job: dict[str, Any] = wait_until(reached, timeout=timeout, interval=0.2, what=f"job {job_id} {'/'.join(statuses)}")
    return job


def test_flower_shows_success_failure_and_revoked(tmp_path: Path) -> None:
    models_file = tmp_path / "models.yaml"
    models_file.write_text(f"{MISSING_MODEL}:\n  role: llm\n  source: /nonexistent/model.gguf\n")
    with EmbeddedRedis(tmp_path / "valkey") as redis:
        env = base_env(redis.url, tmp_path, MODELS_FILE=str(models_file), FLOWER_BASIC_AUTH=":".join(AUTH))
        api, url = start_api(env, tmp_path)
        worker: Process | None = None
        try:
            with running_flower(env, tmp_path) as flower, httpx.Client(base_url=url, timeout=30) as client:
                assert httpx.get(f"{flower}/api/tasks", timeout=10).status_code == 401, "Flower asks for its login"
                # No worker serves `llm` yet: this one is cancelled while it waits in the scheduler, so it never
                # reaches the broker, and Flower never hears of it.
                unseen = submit(client, prompt="Name a colour.", max_tokens=4)
                assert client.delete(f"/v1/jobs/{unseen}").status_code == 202
                assert job_in(client, unseen, ENDED)["status"] == "cancelled"
                succeeded = submit(client, prompt="Say hi.", max_tokens=4, seed=1)
                failed = submit(client, prompt="Say hi.", max_tokens=4, model=MISSING_MODEL)
                worker = start_worker(env, tmp_path, queues="llm")
                wait_for_worker(url, worker)
                assert job_in(client, succeeded, ENDED)["status"] == "succeeded"
                failure = job_in(client, failed, ENDED)
                # What clients see is unchanged: the record's error and the event log's error then done.
                assert failure["status"] == "failed" and failure["error"]["type"] == "model_unavailable", failure
                assert [event.event for event in read_events(client, failed)][-2:] == ["error", "done"]

                # Cancelled while running: the worker stops it within a token or two.
                stopped = submit(client, prompt="Write a long essay about rivers.", max_tokens=1000, seed=5)
                job_in(client, stopped, ("running", *ENDED))
                assert client.delete(f"/v1/jobs/{stopped}").status_code == 202
                assert job_in(client, stopped, ENDED)["status"] == "cancelled"

                expected = {succeeded: "SUCCESS", failed: "FAILURE", unseen: None, stopped: "REVOKED"}

                def reported() -> dict[str, Any] | None:
                    tasks: dict[str, Any] = httpx.get(f"{flower}/api/tasks", auth=AUTH, timeout=10).json()
                    states = {job_id: tasks.get(job_id, {}).get("state") for job_id in expected}
                    return tasks if states == expected else None

                tasks = wait_until(reported, timeout=30, interval=0.5, what=f"Flower to report {expected}")
                assert "JobFailed('model_unavailable'" in tasks[failed]["exception"], tasks[failed]
                assert tasks[succeeded]["exception"] is None
                assert all(tasks[job_id]["name"] == "speechq.llm.generate" for job_id in expected if job_id != unseen)

                # The dashboard's per-worker counters, which stayed at 0 failed before.
                counters = httpx.get(f"{flower}/workers", params={"json": 1}, auth=AUTH, timeout=10).json()["data"]
                assert len(counters) == 1
                assert counters[0].get("task-failed") == 1, counters
                assert counters[0].get("task-succeeded") == 1, counters
                assert counters[0].get("task-revoked") == 1, counters

            # Every message was acknowledged, the failed one's too: none waits in the queue or unacked.
            with Redis.from_url(redis.url) as broker:
                wait_until(lambda: broker.llen("llm") == 0 and broker.hlen("unacked") == 0, what="every ack")
            assert worker.alive()
        finally:
            api.stop()
            if worker is not None:
                worker.stop()


def test_every_outcome_is_reported_as_the_record_says(private_redis: str) -> None:
    """The endings the end-to-end test does not reach: a lost job reports nothing (the worker holding it
    reports it, under the same task id), a poison claim and a redelivered failed job report FAILURE with
    the recorded error, an expired or vanished job is revoked, a redelivered succeeded one succeeds."""
    decoded = Redis.from_url(private_redis, decode_responses=True)
    runner = JobRunner(
        load_settings(redis_url=private_redis), WorkerStore(decoded, ttl=60, lease=5, max_attempts=3), "w", {}
    )
    sent: list[tuple[str, dict[str, Any]]] = []
    task = SimpleNamespace(request=SimpleNamespace(id="job_x"), send_event=lambda kind, **f: sent.append((kind, f)))
    decoded.hset(keys.job("job_x"), "error", json.dumps({"type": "worker_lost", "message": "stopped 3 times"}))

    for status in ("failed", "poison"):
        with pytest.raises(JobFailed) as failure:
            runner.report(task, "job_x", status)  # type: ignore[arg-type]
        assert (failure.value.error_type, failure.value.message) == ("worker_lost", "stopped 3 times")
    with pytest.raises(Ignore):
        runner.report(task, "job_x", "lost")  # type: ignore[arg-type]
    assert sent == []
    for status in ("expired", "missing"):
        with pytest.raises(Ignore):
            runner.report(task, "job_x", status)  # type: ignore[arg-type]
    assert sent == [
        ("task-revoked", {"terminated": False, "signum": None, "expired": True}),
        ("task-revoked", {"terminated": False, "signum": None, "expired": False}),
    ]
    assert runner.report(task, "job_x", "succeeded") == "succeeded"  # type: ignore[arg-type]
    decoded.close()
