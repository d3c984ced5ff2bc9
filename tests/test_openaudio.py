"""The OpenAudio engine over real HTTP against a local server speaking the fish-speech `/v1/tts` protocol.

The server checks every field it receives against fish-speech's `ServeTTSRequest`, answers streamed WAV
at 44.1 kHz (real speech: hibari, resampled), and can fail or stall on demand.
"""

from __future__ import annotations

import asyncio
import base64
import io
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tests.audio import SENTENCES, decode_audio, speak, spoken, wer
from tests.conftest import Stack
from tests.fake_servers import serve
from tests.sse import read_events
from tests.stack import private_stack

API_KEY = "sk-openaudio-test"
RATE = 44_100
# fish_speech/utils/schema.py ServeTTSRequest, as the README's OpenAudio section describes it: name -> check.
FIELDS: dict[str, Any] = {
    "text": lambda v: isinstance(v, str) and v.strip() != "",
    "chunk_length": lambda v: isinstance(v, int) and 100 <= v <= 300,
    "format": lambda v: v in ("wav", "pcm", "mp3"),
    "references": lambda v: (
        isinstance(v, list)
        and all(set(r) == {"audio", "text"} and isinstance(r["audio"], bytes) and isinstance(r["text"], str) for r in v)
    ),
    "reference_id": lambda v: v is None or isinstance(v, str),
    "seed": lambda v: v is None or isinstance(v, int),
    "use_memory_cache": lambda v: v in ("on", "off"),
    "normalize": lambda v: isinstance(v, bool),
    "streaming": lambda v: isinstance(v, bool),
    "max_new_tokens": lambda v: isinstance(v, int) and v >= 0,
    "top_p": lambda v: isinstance(v, float) and 0.1 <= v <= 1.0,
    "repetition_penalty": lambda v: isinstance(v, float) and 0.9 <= v <= 2.0,
    "temperature": lambda v: isinstance(v, float) and 0.1 <= v <= 1.0,
}


def problems(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return ["the body is not a map"]
    found = [f"unexpected field {k!r}" for k in body if k not in FIELDS]
    found += [f"missing field {k!r}" for k in FIELDS if k not in body]
    found += [f"bad {k}: {body[k]!r}" for k, ok in FIELDS.items() if k in body and not ok(body[k])]
    if body.get("streaming") and body.get("format") != "wav":
        found.append("streaming is only for wav")
    return found


def streaming_wav_header(rate: int) -> bytes:
    """What fish-speech sends first when streaming: a WAV header written for zero frames."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
    return buffer.getvalue()


class FishSpeechServer:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.failures = 0
        self.delay = 0.0

    async def tts(self, request: Request) -> Response:
        raw = await request.body()
        call = {"auth": request.headers.get("authorization"), "content_type": request.headers.get("content-type")}
        try:
            body = msgpack.unpackb(raw, raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            self.calls.append({**call, "body": None})
            return JSONResponse({"detail": f"not msgpack: {exc}"}, status_code=400)
        self.calls.append({**call, "body": body})
        if call["auth"] != f"Bearer {API_KEY}":
            return JSONResponse({"detail": "Invalid token"}, status_code=401)
        if call["content_type"] != "application/msgpack":
            return JSONResponse({"detail": "expected application/msgpack"}, status_code=415)
        found = problems(body)
        if found:
            return JSONResponse({"detail": found}, status_code=422)
        if len(self.calls) <= self.failures:
            return JSONResponse({"detail": "CUDA out of memory"}, status_code=503)
        if self.delay:
            await asyncio.sleep(self.delay)
        text = body["text"]

        async def audio() -> AsyncIterator[bytes]:
            yield streaming_wav_header(RATE)
            for sentence in text.split(". "):
                pcm, rate = speak(sentence)
                resampled = np.interp(np.arange(0, len(pcm), rate / RATE), np.arange(len(pcm)), pcm)
                data = (np.clip(resampled, -1, 1) * 32767).astype("<i2").tobytes()
                for at in range(0, len(data), 16_384):
                    yield data[at : at + 16_384]
                await asyncio.sleep(0)

        return StreamingResponse(audio(), media_type="audio/wav")


@pytest.fixture
def openaudio(tmp_path: Path) -> Iterator[tuple[str, FishSpeechServer]]:
    server = FishSpeechServer()
    with (
        serve({"/v1/tts": server.tts}) as base,
        private_stack(
            tmp_path,
            "tts",
            TTS_MODEL="openaudio-s1-mini",
            OPENAUDIO_API_BASE=base,
            OPENAUDIO_API_KEY=API_KEY,
            OPENAUDIO_TIMEOUT_SECONDS="2",
            OPENAUDIO_MAX_RETRIES="2",
            OPENAUDIO_DEFAULT_FORMAT="mp3",
        ) as stack,
    ):
        yield stack.url, server


TEXT = f"{SENTENCES['weather']} {SENTENCES['library']}"


def test_fields_are_the_schema_and_a_503_is_retried(openaudio: tuple[str, FishSpeechServer], stack: Stack) -> None:
    url, server = openaudio
    server.failures = 1
    sample = spoken("fox")
    body = {
        "text": TEXT,
        "response_format": "wav",
        "references": [{"audio": base64.b64encode(sample).decode(), "text": SENTENCES["fox"]}],
        "top_p": 0.7,
        "seed": 7,
    }
    with httpx.Client(base_url=url, timeout=60) as client:
        response = client.post("/v1/text-to-speech", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["sample_rate"] == RATE and answer["model"] == "openaudio-s1-mini"
    audio = base64.b64decode(answer["audio_base64"])
    pcm, rate = decode_audio(audio, "wav")
    assert rate == RATE and len(pcm) / rate > 4

    assert len(server.calls) == 2, "one 503, then the retry"
    for call in server.calls:
        assert call["auth"] == f"Bearer {API_KEY}" and call["content_type"] == "application/msgpack"
        assert problems(call["body"]) == []
    sent = server.calls[-1]["body"]
    assert sent["text"] == TEXT and sent["references"] == [{"audio": sample, "text": SENTENCES["fox"]}]
    assert (sent["format"], sent["streaming"], sent["chunk_length"], sent["normalize"]) == ("wav", True, 200, True)
    assert (sent["top_p"], sent["seed"], sent["use_memory_cache"]) == (0.7, 7, "on")

    with httpx.Client(base_url=stack.url, timeout=60) as local:
        heard = local.post("/v1/speech-to-text", files={"file": ("openaudio.wav", audio)}).json()["text"]
    assert wer(TEXT, heard) <= 0.2, heard


def test_voice_is_a_reference_id_and_speed_is_applied(openaudio: tuple[str, FishSpeechServer]) -> None:
    url, server = openaudio
    with httpx.Client(base_url=url, timeout=60) as client:
        normal = client.post("/v1/text-to-speech", json={"text": TEXT, "response_format": "mp3"}).json()
        fast = client.post(
            "/v1/audio/speech",
            json={"model": "tts-1", "input": TEXT, "voice": "narrator-7", "speed": 1.5, "response_format": "flac"},
        )
    assert fast.status_code == 200, fast.text
    pcm, rate = decode_audio(fast.content, "flac")
    assert rate == RATE
    assert 0.55 < (len(pcm) / rate) / normal["duration"] < 0.8, "speed 1.5 through atempo"
    assert server.calls[0]["body"]["reference_id"] is None
    assert server.calls[1]["body"]["reference_id"] == "narrator-7"


def test_a_timeout_fails_the_job_with_a_clear_error(openaudio: tuple[str, FishSpeechServer]) -> None:
    url, server = openaudio
    server.delay = 5.0  # past OPENAUDIO_TIMEOUT_SECONDS=2
    with httpx.Client(base_url=url, timeout=60) as client:
        job_id = client.post("/v1/jobs/synthesize", json={"text": TEXT}).json()["id"]
        events = read_events(client, job_id)
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert events[-1].json() == {"status": "failed"}
    assert [e.event for e in events].count("error") == 1
    assert job["status"] == "failed" and job["error"]["type"] == "upstream_timeout"
    assert "OPENAUDIO_TIMEOUT_SECONDS=2" in job["error"]["message"]
    assert len(server.calls) == 1, "a timeout is not retried"


def test_a_server_that_keeps_failing_is_a_502_after_the_retries(openaudio: tuple[str, FishSpeechServer]) -> None:
    url, server = openaudio
    server.failures = 100
    with httpx.Client(base_url=url, timeout=60) as client:
        response = client.post("/v1/text-to-speech", json={"text": TEXT})
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["code"] == "upstream_error" and "503" in error["message"] and "3 attempts" in error["message"]
        # The server's address and its answer's text are the operator's to read in the log, not the client's.
        assert "http" not in error["message"] and "CUDA" not in error["message"]
        assert len(server.calls) == 3  # the first try and OPENAUDIO_MAX_RETRIES=2
        # The worker lives on: the next request is served.
        server.failures = 0
        again = client.post("/v1/text-to-speech", json={"text": "Hello again."})
        assert again.status_code == 200, again.text
        # A request that names no format gets OPENAUDIO_DEFAULT_FORMAT.
        assert again.json()["response_format"] == "mp3" and again.json()["media_type"] == "audio/mpeg"
