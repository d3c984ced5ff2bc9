"""Hostile input gets a 4xx that names the field, never a 500 (issue 28): text UTF-8 cannot carry, numbers
JSON should not carry (NaN, ±Infinity) or that are past any sane bound, JSON nested past any sane depth."""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from tests.audio import SENTENCES, as_wav, speak, spoken
from tests.conftest import Stack
from tests.records import cancelled_soon, newest_job_with
from tests.stack import nothing_logged_at_error, wait_until

HEADERS = {"content-type": "application/json"}


@pytest.fixture(autouse=True)
def quiet_logs(stack: Stack) -> Iterator[None]:
    """Hostile input is the client's mistake, answered and logged as such: nothing the API or the worker logs
    while these tests run is at ERROR or a traceback."""
    with nothing_logged_at_error(stack.api, stack.worker):
        yield


def refused(response: httpx.Response, param: str) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["param"] == param or param in error["message"], error


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        ("/v1/jobs/generate", b'{"prompt": "\\ud800", "max_tokens": 4}', "prompt"),
        ("/v1/jobs/chat", b'{"messages": [{"role": "user", "content": "\\udfff"}]}', "messages.0.content"),
        ("/v1/generate", b'{"prompt": "\\ud800", "max_tokens": 4}', "prompt"),
        ("/v1/audio/speech", b'{"model": "tts-1", "input": "\\ud800", "voice": "alloy"}', "input"),
    ],
)
def test_a_lone_surrogate_is_a_4xx_naming_the_field(client: httpx.Client, path: str, raw: bytes, param: str) -> None:
    refused(client.post(path, content=raw, headers=HEADERS), param)


def test_text_that_is_not_utf8_is_a_4xx(client: httpx.Client) -> None:
    response = client.post("/v1/jobs/generate", content=b'{"prompt": "\xed\xa0\x80"}', headers=HEADERS)
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize(
    ("path", "field", "value", "extra"),
    [
        ("/v1/jobs/generate", "temperature", "NaN", {"prompt": "hi"}),
        ("/v1/jobs/generate", "temperature", "-Infinity", {"prompt": "hi"}),
        ("/v1/jobs/generate", "temperature", "Infinity", {"prompt": "hi"}),
        ("/v1/jobs/generate", "temperature", "1e999", {"prompt": "hi"}),
        ("/v1/jobs/generate", "temperature", "1e308", {"prompt": "hi"}),
        ("/v1/jobs/generate", "top_p", "NaN", {"prompt": "hi"}),
        ("/v1/jobs/generate", "repeat_penalty", "NaN", {"prompt": "hi"}),
        ("/v1/jobs/generate", "min_p", "Infinity", {"prompt": "hi"}),
        ("/v1/jobs/generate", "typical_p", "Infinity", {"prompt": "hi"}),
        ("/v1/completions", "temperature", "NaN", {"model": "gemma-3-270m", "prompt": "hi"}),
        ("/v1/chat/completions", "temperature", "-Infinity", {"model": "gemma-3-270m", "messages": []}),
        ("/v1/jobs/synthesize", "speed", "NaN", {"text": "hi"}),
        ("/v1/audio/speech", "speed", "Infinity", {"model": "tts-1", "input": "hi", "voice": "alloy"}),
    ],
)
def test_a_number_past_any_bound_is_a_4xx_naming_it(
    client: httpx.Client, stack: Stack, path: str, field: str, value: str, extra: dict[str, object]
) -> None:
    body = json.dumps(extra)[:-1] + f', "{field}": {value}}}'
    refused(client.post(path, content=body.encode(), headers=HEADERS), field)
    assert "Traceback" not in stack.api.log()[-20_000:]


DEEP = "[" * 10_000 + "]" * 10_000
DEEP_OBJECT = '{"a": ' * 10_000 + "1" + "}" * 10_000


@pytest.mark.parametrize("path", ["/v1/jobs/dialogue", "/v1/dialogue"])
@pytest.mark.parametrize("field", ["generation_config", "synthesis_config"])
def test_json_nested_10000_deep_in_a_form_field_is_a_4xx(
    client: httpx.Client, stack: Stack, path: str, field: str
) -> None:
    response = client.post(path, files={"file": ("a.wav", spoken("fox"), "audio/wav")}, data={field: DEEP_OBJECT})
    refused(response, field)
    assert "Traceback" not in stack.api.log()[-20_000:]


def test_json_nested_10000_deep_in_a_batch_line_fails_that_line(client: httpx.Client) -> None:
    content = (DEEP_OBJECT + "\n").encode()
    file_id = client.post("/v1/files", files={"file": ("b.jsonl", content)}, data={"purpose": "batch"}).json()["id"]
    batch = client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions"}).json()
    assert batch["status"] == "failed"
    assert "nested deeper than 32 levels" in batch["errors"]["data"][0]["message"]


@pytest.mark.parametrize("message", [DEEP, DEEP_OBJECT, '{"prompt": "hi", "temperature": NaN}'])
def test_a_websocket_message_nested_too_deep_or_not_a_number_gets_an_error(
    client: httpx.Client, stack: Stack, message: str
) -> None:
    url = str(client.base_url.copy_with(scheme="ws").join("/v1/generate_ws"))
    with connect(url) as ws:
        ws.send(message)
        answer = json.loads(ws.recv())
        assert answer["status"] == "error" and ("nested deeper" in answer["detail"] or "NaN" in answer["detail"])
    assert "Traceback" not in stack.api.log()[-20_000:]


def lying_wav(rate: int, data: int = 4096) -> bytes:
    header = struct.pack("<IHHIIHH", 16, 1, 1, rate, (rate * 2) & 0xFFFFFFFF, 2, 16)
    return (
        b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt " + header + b"data" + struct.pack("<I", data) + bytes(data)
    )


def test_a_wav_claiming_2147483647_hz_is_refused_by_the_api(client: httpx.Client) -> None:
    response = client.post("/v1/jobs/transcribe", files={"file": ("lie.wav", lying_wav(2_147_483_647), "audio/wav")})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_audio" and "2147483647 Hz" in error["message"]


# --- a request nobody waits for stops its job ---------------------------------------------------------


def test_a_completion_abandoned_after_2s_is_cancelled_within_3s(stack: Stack) -> None:
    marker = f"abandoned-{uuid.uuid4().hex[:8]}"
    body = {"model": "gemma-3-270m", "prompt": f"{marker} Once upon a time", "max_tokens": 400, "temperature": 0.9}
    with httpx.Client(base_url=stack.url, timeout=2.0) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/v1/completions", json=body)
    cancelled_soon(stack, marker, time.monotonic())


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "gemma-3-270m", "stream": True, "max_tokens": 400}),
        ("/v1/generate_stream", {"max_tokens": 400}),
    ],
)
def test_a_stream_closed_early_cancels_its_job(stack: Stack, path: str, body: dict[str, object]) -> None:
    marker = f"closed-{uuid.uuid4().hex[:8]}"
    text = f"{marker} Tell me a very long story."
    request = {**body, "messages": [{"role": "user", "content": text}]} if "chat" in path else {**body, "prompt": text}
    with httpx.Client(base_url=stack.url, timeout=60) as client, client.stream("POST", path, json=request) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)  # the generation is under way
    cancelled_soon(stack, marker, time.monotonic())


def long_speech(seconds: float = 60.0) -> bytes:
    pcm, rate = speak(" ".join(SENTENCES.values()))
    return as_wav(np.tile(pcm, int(seconds * rate / pcm.size) + 1), rate)


def running(stack: Stack, marker: str) -> bool:
    return newest_job_with(stack, marker)["status"] == "running"


@pytest.mark.parametrize(
    "path", ["/v1/generate_ws", "/v1/speech-to-text/ws", "/v1/text-to-speech/ws", "/v1/dialogue/ws"]
)
def test_a_websocket_closed_mid_answer_cancels_its_job(stack: Stack, path: str) -> None:
    """The WebSockets read while they answer: a client that closes mid-answer cancels the job within 3 s,
    even when the server has nothing to send it until the job ends (a transcription)."""
    marker = f"ws-{uuid.uuid4().hex[:8]}"
    story = f"{marker} Tell me a very long story."
    messages: dict[str, dict[str, object]] = {
        "/v1/generate_ws": {"prompt": story, "max_tokens": 400},
        "/v1/speech-to-text/ws": {
            "audio_base64": base64.b64encode(long_speech()).decode(),
            "filename": f"{marker}.wav",
        },
        "/v1/text-to-speech/ws": {"text": f"{marker}. " + " ".join(SENTENCES.values()) * 12},
        "/v1/dialogue/ws": {
            "audio_base64": base64.b64encode(spoken("weather")).decode(),
            "instructions": f"{marker} Answer at great length.",
            "generation_config": {"max_tokens": 1500, "stop": ["@@"]},
        },
    }
    message = messages[path]
    # What shows the answer under way: a few tokens, the first audio, the transcript; a transcription
    # sends nothing until it ends, so its job's status is the sign.
    wanted = {"/v1/generate_ws": 3, "/v1/speech-to-text/ws": 0, "/v1/text-to-speech/ws": 2, "/v1/dialogue/ws": 2}
    with connect(stack.url.replace("http://", "ws://") + path) as ws:
        ws.send(json.dumps(message))
        for _ in range(wanted[path]):
            json.loads(ws.recv(timeout=60))
        wait_until(lambda: running(stack, marker), timeout=60, interval=0.05, what="the job running")
    cancelled_soon(stack, marker, time.monotonic())
