"""Text to speech through every path: the job API, the original API's endpoints, WebSocket and the `openai` client.

The audio is checked by ear, so to speak: it is decoded with PyAV and transcribed back by speechq's own
speech-to-text, and the words must match what was asked for.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from httpx_sse import connect_sse
from websockets.sync.client import ClientConnection, connect

from tests.audio import as_wav, decode_audio, wer
from tests.conftest import Stack
from tests.sse import read_events

PASSAGE = (
    "The museum opens at nine in the morning. Visitors can buy tickets at the front desk. "
    "The gallery on the second floor shows paintings from Spain. Guided tours leave every hour."
)
SHORT = "Please close the window before you leave the room."
FORMATS = ["wav", "pcm", "flac", "mp3", "opus", "aac"]


@pytest.fixture
def oai(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


def transcribe(client: httpx.Client, audio: bytes, fmt: str, rate: int | None = None) -> str:
    if fmt == "pcm":
        pcm, found = decode_audio(audio, fmt, rate)
        audio, fmt = as_wav(pcm, found), "wav"
    response = client.post("/v1/speech-to-text", files={"file": (f"speech.{fmt}", audio)})
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


@pytest.mark.parametrize("model", ["hibari", "piper-en_US-joe-medium"])
def test_job_api_round_trip_through_speech_to_text(client: httpx.Client, model: str) -> None:
    response = client.post("/v1/jobs/synthesize", json={"text": PASSAGE, "model": model, "response_format": "wav"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.json()["kind"] == "synthesize"
    events = read_events(client, job_id)
    assert events[-1].json() == {"status": "succeeded"}
    chunks = [e.json() for e in events if e.event == "audio_chunk"]
    assert len(chunks) >= 4, "one chunk per sentence at least"
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    assert [c["text"] for c in chunks if c["text"]][:2] == [
        "The museum opens at nine in the morning.",
        "Visitors can buy tickets at the front desk.",
    ]
    streamed = b"".join(base64.b64decode(c["audio"]) for c in chunks)

    result = client.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 200
    assert result.headers["content-type"] == "audio/wav"
    job = client.get(f"/v1/jobs/{job_id}").json()
    rate = job["result"]["sample_rate"]
    assert rate == {"hibari": 24_000, "piper-en_US-joe-medium": 22_050}[model]
    assert result.headers["x-sample-rate"] == str(rate)
    whole, found = decode_audio(result.content, "wav")
    assert found == rate and abs(len(whole) / rate - job["result"]["duration"]) < 0.05
    assert 6 < job["result"]["duration"] < 20
    # The streamed chunks, joined, are the same audio as the stored file.
    joined, _ = decode_audio(streamed, "wav")
    assert len(joined) == len(whole)

    heard = transcribe(client, result.content, "wav")
    assert wer(PASSAGE, heard) <= 0.2, heard


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_decodes_at_the_declared_rate(client: httpx.Client, fmt: str) -> None:
    # Opus decodes at 48 kHz whatever it was fed, so speechq only offers it at 48 kHz.
    for rate in (None, 48_000 if fmt == "opus" else 16_000):
        body = {"text": SHORT, "response_format": fmt, **({"sample_rate": rate} if rate else {})}
        response = client.post("/v1/text-to-speech", json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        expected = rate or (48_000 if fmt == "opus" else 24_000)
        assert answer["sample_rate"] == expected
        assert answer["response_format"] == fmt and answer["media_type"].startswith("audio/")
        pcm, found = decode_audio(base64.b64decode(answer["audio_base64"]), fmt, answer["sample_rate"])
        assert found == expected
        assert 1.5 < len(pcm) / found < 6.0, f"{fmt}: {len(pcm) / found:.2f} s for one sentence"
        assert abs(len(pcm) / found - answer["duration"]) < 0.15
        assert float(abs(pcm).max()) > 0.1, "not silence"
    heard = transcribe(client, base64.b64decode(answer["audio_base64"]), fmt, answer["sample_rate"])
    assert wer(SHORT, heard) <= 0.2, heard


def test_seed_stream_returns_raw_bytes_with_format_headers(client: httpx.Client) -> None:
    body = {"text": PASSAGE, "response_format": "mp3", "stream": True, "sample_rate": 22_050}
    with client.stream("POST", "/v1/text-to-speech", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/mpeg"
        assert response.headers["x-audio-format"] == "mp3"
        assert response.headers["x-sample-rate"] == "22050"
        pieces = list(response.iter_raw())
    audio = b"".join(pieces)
    pcm, rate = decode_audio(audio, "mp3")
    assert rate == 22_050 and len(pcm) / rate > 6
    assert wer(PASSAGE, transcribe(client, audio, "mp3")) <= 0.2


def test_first_audio_chunk_arrives_before_the_last_sentence_is_synthesized(client: httpx.Client) -> None:
    text = " ".join([PASSAGE, PASSAGE.replace("nine", "ten"), PASSAGE.replace("Spain", "Italy")])
    job_id = client.post("/v1/jobs/synthesize", json={"text": text, "response_format": "opus"}).json()["id"]
    arrivals: list[tuple[str, float, dict[str, Any]]] = []
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events") as source:
        for event in source.iter_sse():
            arrivals.append((event.event, time.monotonic(), event.json()))
    kinds = [kind for kind, _, _ in arrivals]
    first_chunk = kinds.index("audio_chunk")
    synthesized = [n for n, (kind, _, data) in enumerate(arrivals) if kind == "progress" and data["fraction"] > 0]
    # Progress is reported after each sentence is synthesized: the first chunk came before the last one was.
    assert first_chunk < synthesized[-1]
    assert kinds.count("audio_chunk") >= 12
    started = arrivals[kinds.index("started")][1]
    finished = arrivals[-1][1]
    first = arrivals[first_chunk][1]
    assert first - started < 0.5 * (finished - started), "the first chunk waited for most of the synthesis"


def test_websocket_streams_metadata_chunks_and_done(stack: Stack) -> None:
    ws_url = stack.url.replace("http://", "ws://") + "/v1/text-to-speech/ws"

    def receive(ws: ClientConnection) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(ws.recv(timeout=120))
        return message

    with connect(ws_url) as ws:  # one connection serves request after request
        ws.send(json.dumps({"text": PASSAGE, "stream": True, "format": "flac", "sample_rate": 16_000}))
        messages = [receive(ws)]
        while messages[-1]["event"] != "done":
            messages.append(receive(ws))
        events = [m["event"] for m in messages]
        assert events[0] == "metadata" and set(events[1:-1]) == {"audio_chunk"} and len(events) >= 6
        assert messages[0]["data"]["sample_rate"] == 16_000 and messages[0]["data"]["response_format"] == "flac"
        assert [m["data"]["index"] for m in messages[1:-1]] == list(range(len(messages) - 2))
        audio = b"".join(base64.b64decode(m["data"]["audio_base64"]) for m in messages[1:-1])
        pcm, rate = decode_audio(audio, "flac")
        assert rate == 16_000 and abs(len(pcm) / rate - messages[-1]["data"]["duration"]) < 0.05

        ws.send(json.dumps({"text": SHORT, "format": "wav", "stream": False}))
        synthesis = receive(ws)
        assert synthesis["event"] == "synthesis"
        data = synthesis["data"]
        assert data["response_format"] == "wav" and data["media_type"] == "audio/wav"
        pcm, rate = decode_audio(base64.b64decode(data["audio_base64"]), "wav")
        assert rate == data["sample_rate"] == 24_000 and len(pcm) / rate > 1.5

        ws.send(json.dumps({"text": SHORT, "format": "wma"}))
        error = receive(ws)
        assert error["event"] == "error" and error["detail"].startswith("format:")  # the field as it was sent


def test_openai_client_speech_create_and_streaming(oai: openai.OpenAI, client: httpx.Client) -> None:
    response = oai.audio.speech.create(model="tts-1", voice="alloy", input=SHORT, response_format="mp3")
    pcm, rate = decode_audio(response.content, "mp3")
    assert rate == 24_000 and len(pcm) / rate > 1.5
    assert wer(SHORT, transcribe(client, response.content, "mp3")) <= 0.2

    with oai.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="coral", input=PASSAGE, response_format="pcm", speed=1.25
    ) as streamed:
        assert streamed.headers["content-type"] == "audio/pcm"
        audio = b"".join(streamed.iter_bytes())
    pcm, rate = decode_audio(audio, "pcm", 24_000)
    normal = client.post("/v1/text-to-speech", json={"text": PASSAGE}).json()["duration"]
    assert 0.65 < (len(pcm) / rate) / normal < 0.95, "speed 1.25 speaks faster"
    assert wer(PASSAGE, transcribe(client, audio, "pcm", 24_000)) <= 0.2


def test_openai_sse_stream_format(client: httpx.Client) -> None:
    body = {"model": "tts-1", "voice": "nova", "input": PASSAGE, "response_format": "wav", "stream_format": "sse"}
    with connect_sse(client, "POST", "/v1/audio/speech", json=body) as source:
        assert source.response.status_code == 200
        events = [event.json() for event in source.iter_sse()]
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"}
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["input_tokens"] > 0
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    pcm, rate = decode_audio(audio, "wav")
    assert rate == 24_000 and len(pcm) / rate > 6


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/jobs/synthesize", {"text": "x" * 4097}, 422, "text"),
        ("/v1/text-to-speech", {"input": "x" * 4097}, 422, "input"),
        ("/v1/text-to-speech", {"text": "Hi.", "voice": "darth"}, 422, "voice"),
        ("/v1/text-to-speech", {"text": "Hi.", "response_format": "wma"}, 422, "response_format"),
        ("/v1/jobs/synthesize", {"text": "Hi.", "response_format": "opus", "sample_rate": 22_050}, 422, "sample_rate"),
        ("/v1/text-to-speech", {"text": "Hi.", "speed": 9}, 422, "speed"),
        ("/v1/text-to-speech", {"text": "   "}, 422, "text"),
        ("/v1/jobs/synthesize", {"text": "Hi.", "references": [{"audio": "AAAA", "text": "hi"}]}, 422, "references"),
        ("/v1/audio/speech", {"model": "tts-1", "input": "x" * 4097, "voice": "alloy"}, 422, "input"),
        ("/v1/audio/speech", {"model": "tts-1", "input": "Hi.", "voice": "darth"}, 422, "voice"),
        (
            "/v1/audio/speech",
            {"model": "tts-1", "input": "Hi.", "voice": "alloy", "response_format": "ogg"},
            422,
            "response_format",
        ),
        ("/v1/audio/speech", {"model": "tts-9", "input": "Hi.", "voice": "alloy"}, 404, "model"),
    ],
)
def test_bad_requests_name_the_field(
    client: httpx.Client, path: str, body: dict[str, object], status: int, param: str
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert param in error["message"] or status == 404


def test_voices_and_models_are_listed(client: httpx.Client) -> None:
    voices = client.get("/v1/audio/voices").json()
    assert {"id": "heart", "model": "hibari", "sample_rate": 24_000, "default": True} in voices["data"]
    assert {v["model"] for v in voices["data"]} >= {"hibari", "piper-en_US-joe-medium", "openaudio-s1-mini"}
    assert voices["openai_voices"]["alloy"] == "heart"
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["hibari"]["role"] == "tts" and models["hibari"]["voices"] == ["heart"]
    assert models["hibari"]["loaded"], "the worker preloads the default voice"
