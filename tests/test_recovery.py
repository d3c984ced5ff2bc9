"""Cancelling, dead workers, poison jobs and a missing Redis: the client gets a clear answer, no job is lost."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from httpx_sse import connect_sse

from cli.embedded_redis import EmbeddedRedis
from tests.conftest import MISSING_MODEL, Stack
from tests.sse import read_events
from tests.stack import base_env, doomed_worker, start_api
from tests.test_jobs_api import submit, wait_done

RAMBLE = {"prompt": "Once upon a time, in a land far away,", "max_tokens": 1900, "temperature": 0.9, "seed": 11}


def wait_for_first_token(client: httpx.Client, job_id: str) -> None:
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events") as source:
        for event in source.iter_sse():
            assert event.event != "done", "the job ended before it could be interrupted"
            if event.event == "token":
                return


def test_cancelling_a_long_generation_stops_it_and_the_worker_moves_on(client: httpx.Client) -> None:
    job_id = str(submit(client, "completion", **RAMBLE)["id"])
    wait_for_first_token(client, job_id)  # a generation under way, not one still loading
    asked = time.monotonic()
    response = client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 202
    assert response.json()["status"] in ("cancelling", "cancelled")
    job = wait_done(client, job_id, timeout=10)
    assert job["status"] == "cancelled"
    assert time.monotonic() - asked < 5
    events = read_events(client, job_id)
    assert events[-1].json() == {"status": "cancelled"}
    tokens = sum(e.event == "token" for e in events)
    assert 0 < tokens < 1900
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 202  # cancelling twice is harmless

    nxt = wait_done(client, str(submit(client, prompt="Hi", max_tokens=4)["id"]))
    assert nxt["status"] == "succeeded"


def test_cancelling_a_queued_job_means_no_worker_runs_it(client: httpx.Client, stack: Stack) -> None:
    # One blocker per generation slot (LLM_PARALLEL, 4 by default), so the next job has to wait for a slot.
    blockers = [str(submit(client, "completion", **RAMBLE)["id"]) for _ in range(4)]
    for blocker in blockers:
        wait_for_first_token(client, blocker)
    queued = str(submit(client, prompt="never run", max_tokens=4)["id"])
    assert client.get(f"/v1/jobs/{queued}").json()["queue_position"] == 0
    assert client.delete(f"/v1/jobs/{queued}").json()["status"] == "cancelled"
    for blocker in blockers:
        client.delete(f"/v1/jobs/{blocker}")
    assert [wait_done(client, blocker)["status"] for blocker in blockers] == ["cancelled"] * 4
    after = wait_done(client, str(submit(client, prompt="Hi", max_tokens=2)["id"]))  # the slots are free again
    assert after["status"] == "succeeded"
    job = client.get(f"/v1/jobs/{queued}").json()
    assert job["status"] == "cancelled" and job["attempts"] == 0
    assert queued not in stack.worker.log(), "it waited in the scheduler: its message never reached the worker"
    assert client.delete(f"/v1/jobs/{queued}").status_code == 202


def test_cancelling_a_finished_job_is_409(client: httpx.Client) -> None:
    job_id = str(submit(client, prompt="Hi", max_tokens=2)["id"])
    wait_done(client, job_id)
    response = client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 409
    assert "succeeded" in response.json()["error"]["message"]


def test_a_job_that_fails_leaves_the_worker_alive(client: httpx.Client, stack: Stack) -> None:
    job = wait_done(client, str(submit(client, prompt="hi", model=MISSING_MODEL, max_tokens=2)["id"]))
    assert job["status"] == "failed"
    assert job["error"]["type"] == "model_unavailable"
    assert "is not prepared on this worker" in job["error"]["message"]
    response = client.post("/v1/generate", json={"prompt": "hi", "model": MISSING_MODEL})
    assert response.status_code == 503 and response.json()["error"]["code"] == "model_unavailable"
    assert stack.worker.alive()
    assert wait_done(client, str(submit(client, prompt="Hi", max_tokens=2)["id"]))["status"] == "succeeded"


def test_a_job_whose_worker_is_killed_is_redelivered_and_finishes(private_redis: str, tmp_path: Path) -> None:
    with (
        doomed_worker(private_redis, tmp_path, time_limit=8) as stack,
        httpx.Client(base_url=stack.url, timeout=30) as client,
    ):
        body = {**RAMBLE, "max_tokens": 300}
        job_id = str(submit(client, "completion", **body)["id"])
        wait_for_first_token(client, job_id)
        stack.worker.kill()
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
        stack.rescue()
        job = wait_done(client, job_id, timeout=60)
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 2
        started = [e.json() for e in read_events(client, job_id) if e.event == "started"]
        assert [s["redelivered"] for s in started] == [False, True]
        assert started[0]["worker"] != started[1]["worker"]


def test_redis_unreachable_answers_503_not_a_traceback(tmp_path: Path) -> None:
    """Redis gone after the API started (at start-up the API waits for it: test_broker_wait.py)."""
    server = EmbeddedRedis(tmp_path / "valkey")
    env = base_env(server.start(), tmp_path)
    api, url = start_api(env, tmp_path)
    server.stop()
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            for method, path, body in [
                ("POST", "/v1/jobs/generate", {"prompt": "hi"}),
                ("GET", "/v1/jobs/job_x", None),
                ("POST", "/v1/generate", {"prompt": "hi"}),
            ]:
                response = client.request(method, path, json=body)
                assert response.status_code == 503, response.text
                error = response.json()["error"]
                assert error["code"] == "redis_unavailable"
                assert "Redis" in error["message"]
                assert response.headers["Retry-After"]
            assert client.get("/health").status_code == 200
            ready = client.get("/ready")
            assert ready.status_code == 503 and "unreachable" in ready.json()["redis"]
        assert "Traceback" not in api.log()
    finally:
        api.stop()
