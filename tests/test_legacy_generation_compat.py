"""Clients of the original Gemma 3 Speech API keep working: its generation routes, errors, auth, models
and metrics, checked against models of the original's own schemas and loops (README: Migrating)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, ConfigDict
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Stack
from tests.stack import start_api

KEY = "sk-seed-compat-0123456789"


class GenerationResponse(BaseModel):
    """The original's response model (app/schemas/generation.py)."""

    model_config = ConfigDict(extra="allow")  # speechq may add keys, never drop or retype these
    generated_text: str


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    name: str
    description: str


class ModelListResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    models: list[ModelInfo]


SHORT = {"prompt": "Name a colour.", "max_tokens": 8, "temperature": 0}


def ws_url(url: str, path: str) -> str:
    return url.replace("http://", "ws://") + path


def receive(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(ws.recv(timeout=60))
    return message


def tokens_until_done(ws: ClientConnection) -> str:
    """The original's client loop: concatenate `token`s until `{"status": "done"}`."""
    text = ""
    while True:
        message = receive(ws)
        if message.get("status") == "done":
            return text
        assert set(message) == {"token"}, message
        text += message["token"]


@pytest.fixture(scope="module")
def secured(stack: Stack, logs_dir: Path) -> Iterator[str]:
    api, url = start_api({**stack.env, "API_KEY_ENABLED": "true", "API_KEYS": KEY}, logs_dir)
    try:
        yield url
    finally:
        api.stop()


@pytest.mark.parametrize(
    "extra",
    [
        {"tfs_z": 0.95},  # a field of the original's own request model
        {"some_new_field": 1, "user": "x"},  # unknown fields are ignored
        {"stop": None},
        {"stop": [""]},
        {"top_p": 0.0, "typical_p": 2.0, "min_p": 1.5},
        {"temperature": 3.0, "repeat_penalty": 0.0},
        {"seed": 2**40, "top_k": 10**7},
        {"prompt": ""},
    ],
)
def test_generate_accepts_what_the_original_accepted(client: httpx.Client, extra: dict[str, Any]) -> None:
    response = client.post("/v1/generate", json={**SHORT, **extra})
    assert response.status_code == 200, response.text
    GenerationResponse.model_validate(response.json())


def test_generate_stream_sends_the_text_so_far_as_json_lines(client: httpx.Client) -> None:
    body = {**SHORT, "max_tokens": 24, "tfs_z": 1.0}
    whole = GenerationResponse.model_validate(client.post("/v1/generate", json=body).json()).generated_text
    with client.stream("POST", "/v1/generate_stream", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert len(lines) > 1
    texts = [GenerationResponse.model_validate(line).generated_text for line in lines]
    for before, after in zip(texts, texts[1:], strict=False):  # cumulative: each line extends the last
        assert after.startswith(before) and len(after) > len(before)
    assert texts[-1] == whole


def test_generate_stream_reports_a_failure_as_a_detail_line(client: httpx.Client) -> None:
    too_long = {"prompt": "word " * 3_000, "max_tokens": 8}  # past the test stack's context window
    with client.stream("POST", "/v1/generate_stream", json=too_long) as response:
        assert response.status_code == 200
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert len(lines) == 1 and isinstance(lines[0]["detail"], str) and "context" in lines[0]["detail"]


def test_generate_ws_serves_request_after_request_on_one_connection(stack: Stack) -> None:
    with connect(ws_url(stack.url, "/v1/generate_ws")) as ws:
        ws.send(json.dumps(SHORT))
        first = tokens_until_done(ws)
        ws.send(json.dumps({**SHORT, "prompt": "Name an animal.", "unknown": True, "stop": None}))
        second = tokens_until_done(ws)
        assert first and second
        ws.send(json.dumps({"prompt": "x", "max_tokens": 0}))  # the original closed on a bad request
        error = receive(ws)
        assert error["status"] == "error" and "max_tokens" in error["detail"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


def test_errors_carry_the_originals_detail(client: httpx.Client) -> None:
    invalid = client.post("/v1/generate", json={"prompt": "x", "max_tokens": 0})
    assert invalid.status_code == 422
    [item] = invalid.json()["detail"]  # FastAPI's list, as the original's clients parse it
    assert item["loc"] == ["body", "max_tokens"] and item["type"] == "greater_than_equal"
    assert item["input"] == 0 and item["ctx"] == {"ge": 1} and item["msg"]
    missing = client.post("/v1/generate", json={**SHORT, "model": "google/gemma-3-12b-it-qat-q4_0-gguf"})
    assert missing.status_code == 404 and isinstance(missing.json()["detail"], str)
    assert missing.json()["error"]["code"] == "model_not_found"


def test_a_wrong_key_is_403_and_a_missing_one_401_as_the_original_answered(secured: str) -> None:
    wrong = httpx.post(f"{secured}/v1/generate", json=SHORT, headers={"X-API-Key": "sk-wrong"}, timeout=30)
    assert (wrong.status_code, wrong.json()["detail"]) == (403, "Invalid API key")
    missing = httpx.post(f"{secured}/v1/generate", json=SHORT, timeout=30)
    assert missing.status_code == 401 and isinstance(missing.json()["detail"], str)
    assert httpx.post(f"{secured}/v1/generate", json=SHORT, headers={"X-API-Key": KEY}, timeout=60).status_code == 200
    # speechq's own routes keep OpenAI's answer to a wrong key.
    jobs = httpx.post(f"{secured}/v1/jobs/generate", json=SHORT, headers={"X-API-Key": "sk-wrong"}, timeout=30)
    assert jobs.status_code == 401
    for headers, code in (({"X-API-Key": "sk-wrong"}, 4403), ({}, 4401)):
        with connect(ws_url(secured, "/v1/generate_ws"), additional_headers=headers) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code


def test_models_list_keeps_the_originals_shape(client: httpx.Client) -> None:
    listed = ModelListResponse.model_validate(client.get("/v1/models").json())
    assert {model.id for model in listed.models} >= {"gemma-3-270m", "whisper-tiny.en", "hibari"}
    one = ModelInfo.model_validate(client.get("/v1/models/gemma-3-270m").json())
    assert one.name == "gemma-3-270m"


def test_metrics_export_the_default_process_and_python_collectors(client: httpx.Client) -> None:
    text = client.get("/metrics").text
    for family in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info", "python_gc_"):
        assert family in text
