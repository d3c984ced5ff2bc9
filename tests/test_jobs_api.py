"""The job API end to end: real HTTP, real Redis, a real Celery worker running gemma-3-270m."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.sse import read_events
from tests.stack import wait_until


def submit(client: httpx.Client, kind: str = "generate", **body: object) -> dict[str, Any]:
    response = client.post(f"/v1/jobs/{kind}", json=body)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_done(client: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled", "expired") else None

    return wait_until(finished, timeout=timeout, what=f"job {job_id}")


def test_submit_poll_succeeds_with_gemma_text(client: httpx.Client) -> None:
    created = submit(client, prompt="Write one sentence about the sea.", max_tokens=24, seed=7)
    assert created["status"] == "queued"
    assert created["links"] == {
        "self": f"/v1/jobs/{created['id']}",
        "events": f"/v1/jobs/{created['id']}/events",
        "result": f"/v1/jobs/{created['id']}/result",
        "ws": f"/v1/jobs/{created['id']}/ws",
    }
    job = wait_done(client, str(created["id"]))
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert isinstance(result, dict)
    assert result["model"] == "gemma-3-270m"
    assert result["text"].strip()
    assert 0 < result["usage"]["completion_tokens"] <= 24
    assert job["attempts"] == 1
    for stamp in ("created_at", "queued_at", "running_at", "succeeded_at", "finished_at"):
        assert stamp in job["timestamps"]
    assert job["timings"]["total_seconds"] >= job["timings"]["run_seconds"] > 0
    assert client.get(f"/v1/jobs/{created['id']}/result").json() == result


def test_events_replay_to_a_late_subscriber_and_resume_without_gap(client: httpx.Client) -> None:
    created = submit(client, prompt="Count from one to ten.", max_tokens=20, seed=1)
    job_id = str(created["id"])
    wait_done(client, job_id)

    events = read_events(client, job_id)  # connects after the job finished: the whole history
    types = [e.event for e in events]
    assert types[0] == "queued" and types[1] == "started"
    assert types[-3:] == ["token", "result", "done"] or types[-2:] == ["result", "done"]
    assert events[-1].json() == {"status": "succeeded"}
    tokens = "".join(e.json()["text"] for e in events if e.event == "token")
    assert tokens == next(e.json() for e in events if e.event == "result")["text"]
    ids = [e.id for e in events]
    assert all(ids) and len(set(ids)) == len(ids)
    assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))

    middle = len(events) // 2
    resumed = read_events(client, job_id, **{"Last-Event-ID": ids[middle]})
    assert [e.id for e in resumed] == ids[middle + 1 :]  # no gap, no duplicate
    assert [e.data for e in resumed] == [e.data for e in events[middle + 1 :]]


def test_live_sse_subscriber_sees_tokens_as_they_come(client: httpx.Client) -> None:
    created = submit(client, prompt="Tell a short story about a fox.", max_tokens=64, seed=3)
    events = read_events(client, str(created["id"]))
    assert events[-1].event == "done"
    assert sum(e.event == "token" for e in events) > 5


def test_websocket_streams_the_same_events(client: httpx.Client, stack: object) -> None:
    created = submit(client, prompt="Name three colours.", max_tokens=16, seed=2)
    job_id = str(created["id"])
    ws_url = client.base_url.copy_with(scheme="ws").join(f"/v1/jobs/{job_id}/ws")
    messages = []
    with connect(str(ws_url)) as ws:
        for raw in ws:
            messages.append(json.loads(raw))
    assert messages[-1]["event"] == "done"
    sse = read_events(client, job_id)
    assert [(m["id"], m["event"], m["data"]) for m in messages] == [(e.id, e.event, e.json()) for e in sse]


def test_idempotency_key_replays_and_rejects_a_different_body(client: httpx.Client) -> None:
    key = uuid.uuid4().hex
    body = {"prompt": "Hello", "max_tokens": 4}
    first = client.post("/v1/jobs/generate", json=body, headers={"Idempotency-Key": key})
    again = client.post("/v1/jobs/generate", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = client.post("/v1/jobs/generate", json={**body, "max_tokens": 5}, headers={"Idempotency-Key": key})
    assert other.status_code == 422
    assert other.json()["error"]["param"] == "Idempotency-Key"
    fresh = client.post("/v1/jobs/generate", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert fresh.json()["id"] != first.json()["id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 5000}, "max_tokens"),
        ({"prompt": "hi", "temperature": "hot"}, "temperature"),
        ({"prompt": 7}, "prompt"),
        ({"max_tokens": 5}, "prompt"),
        ({"prompt": "hi", "model": 7}, "model"),
        ({"prompt": "hi", "surprise": 1}, "surprise"),  # speechq's own route only: the original's ignores it
    ],
)
def test_bad_input_answers_422_naming_the_field(client: httpx.Client, body: dict[str, object], field: str) -> None:
    for path in ("/v1/jobs/generate", "/v1/generate")[: 1 if field == "surprise" else 2]:
        response = client.post(path, json=body)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["param"] == field
        assert field in error["message"]


def test_malformed_json_is_422(client: httpx.Client) -> None:
    response = client.post("/v1/jobs/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


def test_unknown_job_and_kind_answer_404(client: httpx.Client) -> None:
    for method, path in [
        ("GET", "/v1/jobs/job_doesnotexist"),
        ("DELETE", "/v1/jobs/job_doesnotexist"),
        ("GET", "/v1/jobs/job_doesnotexist/result"),
        ("GET", "/v1/jobs/job_doesnotexist/events"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    response = client.post("/v1/jobs/sing", json={})
    assert response.status_code == 404
    assert "generate" in response.json()["error"]["message"]


def test_bad_last_event_id_is_422(client: httpx.Client) -> None:
    created = submit(client, prompt="hi", max_tokens=2)
    response = client.get(f"/v1/jobs/{created['id']}/events", headers={"Last-Event-ID": "yesterday"})
    assert response.status_code == 422


def test_list_filters_and_paginates(client: httpx.Client) -> None:
    ids = [str(submit(client, "completion", prompt=f"{n} little pigs", max_tokens=2)["id"]) for n in range(5)]
    for job_id in ids:
        wait_done(client, job_id)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"kind": "completion", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/jobs", params=params).json()
        assert len(page["data"]) <= 2
        assert all(job["kind"] == "completion" for job in page["data"])
        seen += [job["id"] for job in page["data"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen.index(ids[4]) < seen.index(ids[0])  # newest first
    assert set(ids) <= set(seen) and len(seen) == len(set(seen))
    failed = client.get("/v1/jobs", params={"status": "failed"}).json()
    assert all(job["status"] == "failed" for job in failed["data"])
    assert client.get("/v1/jobs", params={"status": "bogus"}).status_code == 422


def test_result_of_an_unfinished_job_is_409(client: httpx.Client) -> None:
    created = submit(client, prompt="Write a long essay about rivers.", max_tokens=400, seed=5)
    response = client.get(f"/v1/jobs/{created['id']}/result")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "job_not_succeeded"
    client.delete(f"/v1/jobs/{created['id']}")
    wait_done(client, str(created["id"]))


def test_every_response_carries_a_request_id(client: httpx.Client) -> None:
    assert len(client.get("/health").headers["X-Request-ID"]) >= 16
    response = client.post(
        "/v1/jobs/generate", json={"prompt": "hi", "max_tokens": 2}, headers={"X-Request-ID": "abc-123"}
    )
    assert response.headers["X-Request-ID"] == "abc-123"
    job = client.get(f"/v1/jobs/{response.json()['id']}").json()
    assert job["request_id"] == "abc-123"


def test_metrics_count_requests_by_route(client: httpx.Client) -> None:
    client.get(f"/v1/jobs/job_missing_{time.time_ns()}")
    text = client.get("/metrics").text
    assert 'app_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"}' in text
    assert "app_http_request_duration_seconds_bucket" in text


def test_readers_joining_mid_stream_see_exactly_the_history(client: httpx.Client, stack: object) -> None:
    """Live readers take events from their notifications; whenever they join, none is missed or repeated."""
    import threading

    created = submit(client, "completion", prompt="The history of the river", max_tokens=120, seed=9)
    job_id = str(created["id"])
    seen: dict[int, list[tuple[str | None, str, str]]] = {}

    def reader(index: int, delay: float) -> None:
        time.sleep(delay)
        with httpx.Client(base_url=client.base_url, timeout=60) as own:
            seen[index] = [(e.id, e.event, e.data) for e in read_events(own, job_id)]

    threads = [threading.Thread(target=reader, args=(i, i * 0.3)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    history = [(e.id, e.event, e.data) for e in read_events(client, job_id)]
    assert history[-1][1] == "done"
    assert len(seen) == 5
    for events in seen.values():
        assert events == history


def test_a_resume_from_the_done_event_ends_at_once(client: httpx.Client) -> None:
    """What an EventSource sends when the connection dropped just after `done`: nothing follows it, so
    the stream (and the WebSocket) end at once instead of waiting for the job to expire."""
    job_id = str(submit(client, prompt="Hi", max_tokens=2)["id"])
    events = read_events(client, job_id)
    done = events[-1]
    assert done.event == "done"
    started = time.monotonic()
    with httpx.Client(base_url=client.base_url, timeout=10) as short:
        assert read_events(short, job_id, **{"Last-Event-ID": done.id}) == []
        url = str(short.base_url.copy_with(scheme="ws").join(f"/v1/jobs/{job_id}/ws"))
    with connect(f"{url}?after={done.id}") as ws:
        assert list(ws) == []
    assert time.monotonic() - started < 3
