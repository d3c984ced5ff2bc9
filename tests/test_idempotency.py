"""Every route that creates a job answers it one way (`api.intake.jobs.created`): 202, its public shape,
`Location`, `X-Job-ID` and `Idempotent-Replayed`, which turns true when an Idempotency-Key returns the job
it made before."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.audio import spoken

JSON_ROUTES = [
    ("/v1/jobs/generate", {"prompt": "Hi", "max_tokens": 2}),
    ("/v1/jobs/chat", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    ("/v1/jobs/completion", {"prompt": "Hi", "max_tokens": 2}),
    ("/v1/jobs/synthesize", {"text": "Hi."}),
]
UPLOAD_ROUTES = ["/v1/jobs/transcribe", "/v1/jobs/dialogue"]


def post_twice(client: httpx.Client, path: str, **request: Any) -> tuple[httpx.Response, httpx.Response]:
    headers = {"Idempotency-Key": f"test-{uuid.uuid4()}"}
    return client.post(path, headers=headers, **request), client.post(path, headers=headers, **request)


def check(first: httpx.Response, again: httpx.Response) -> None:
    assert first.status_code == 202 and again.status_code == 202, (first.text, again.text)
    job_id = first.json()["id"]
    assert again.json()["id"] == job_id
    for response, replayed in ((first, "false"), (again, "true")):
        assert response.headers["Idempotent-Replayed"] == replayed
        assert response.headers["Location"] == f"/v1/jobs/{job_id}"
        assert response.headers["X-Job-ID"] == job_id
        assert set(response.json()) == {"id", "kind", "status", "created_at", "links"}


@pytest.mark.parametrize(("path", "body"), JSON_ROUTES)
def test_a_json_job_route_says_when_it_replays(client: httpx.Client, path: str, body: dict[str, Any]) -> None:
    check(*post_twice(client, path, json=body))


@pytest.mark.parametrize("path", UPLOAD_ROUTES)
def test_an_upload_job_route_says_when_it_replays(client: httpx.Client, path: str) -> None:
    check(*post_twice(client, path, files={"file": ("fox.wav", spoken("fox"), "audio/wav")}))
