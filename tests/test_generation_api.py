"""The original API's generation endpoints, now answered through the queue."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import Stack
from tests.sse import read_events
from tests.stack import start_api


def test_generate_returns_generated_text(client: httpx.Client) -> None:
    response = client.post("/v1/generate", json={"prompt": "What is two plus two?", "max_tokens": 16, "seed": 4})
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"generated_text"}
    assert response.json()["generated_text"].strip()


def test_stop_sequences_are_honoured(client: httpx.Client) -> None:
    body = {"prompt": "a b c d e f g h i j", "max_tokens": 64, "temperature": 0.0, "stop": ["k"]}
    created = client.post("/v1/jobs/completion", json=body).json()
    events = client.get(f"/v1/jobs/{created['id']}/events")
    assert "event: done" in events.text
    result = client.get(f"/v1/jobs/{created['id']}/result").json()
    assert "k" not in result["text"]
    assert result["finish_reason"] == "stop"


def test_generate_ws_bad_request_closes_1011_with_the_field(client: httpx.Client) -> None:
    url = str(client.base_url.copy_with(scheme="ws").join("/v1/generate_ws"))
    with connect(url) as ws:
        ws.send(json.dumps({"prompt": "hi", "max_tokens": -1}))
        message = json.loads(ws.recv())
        assert message["status"] == "error"
        assert "max_tokens" in message["detail"]
        try:
            ws.recv()
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1011


def test_context_overflow_is_a_clear_400(client: httpx.Client) -> None:
    response = client.post("/v1/generate", json={"prompt": "word " * 2000, "max_tokens": 512})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "context window" in error["message"]


def test_operator_defaults_fill_what_a_request_leaves_out(stack: Stack, logs_dir: Path) -> None:
    api, url = start_api({**stack.env, "LLM_MAX_TOKENS": "3", "LLM_TEMPERATURE": "0"}, logs_dir)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            prompt = "Write a long story about a lighthouse keeper and the sea."
            job = client.post("/v1/jobs/completion", json={"prompt": prompt}).json()["id"]
            read_events(client, job)
            result = client.get(f"/v1/jobs/{job}/result").json()
            assert result["usage"]["completion_tokens"] == 3 and result["finish_reason"] == "length"
            chat = client.post(
                "/v1/chat/completions",
                json={"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": prompt}]},
            ).json()
            assert chat["usage"]["completion_tokens"] == 3
            sent = client.post("/v1/jobs/completion", json={"prompt": prompt, "max_tokens": 8}).json()["id"]
            read_events(client, sent)
            assert client.get(f"/v1/jobs/{sent}/result").json()["usage"]["completion_tokens"] == 8
    finally:
        api.stop()
