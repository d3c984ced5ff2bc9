"""`POST /v1/dialogue` answers as the original Gemma 3 Speech API did (gemma-3-api/app at 78b0199; README: Migrating).

The models below re-declare the original's response schemas (app/schemas/speech.py); the stream checks
follow its `dialogue_stream` loop: `metadata`, `transcript`, one `assistant_text`, `audio_chunk`…, `done`,
one JSON object per line under `Content-Type: application/json`. The form is read as the original's
`_parse_json_field` and `ConversationService` read it. Real HTTP, a real worker; the session stack's
OpenAudio points at a closed port (a speech stage that fails) and its default voice is hibari's.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import BaseModel, Field, PositiveInt
from redis import Redis

from api.legacy.dialogue import legacy_generation
from jobstore import keys
from tests.audio import decode_audio, encode, spoken
from tests.conftest import MISSING_MODEL, Stack
from tests.stack import start_api

CHAT = {"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 40, "seed": 1}
SHORT = "Answer in one short sentence."


class SpeechTranscriptionSegment(BaseModel):
    id: int | None = None
    start: float | None = None
    end: float | None = None
    text: str


class SpeechTranscriptionResponse(BaseModel):
    text: str
    language: str | None = None
    segments: list[SpeechTranscriptionSegment] = Field(default_factory=list)


class SpeechDialogueResponse(BaseModel):
    transcript: SpeechTranscriptionResponse
    response_text: str
    audio_base64: str
    response_format: str
    media_type: str
    sample_rate: PositiveInt
    reference_id: str | None = None


def post(client: httpx.Client, audio: bytes = b"", /, **fields: Any) -> httpx.Response:
    """The original's clients sent the configs as JSON strings in a multipart form."""
    data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
    return client.post("/v1/dialogue", files={"file": ("question.wav", audio or spoken("fox"))}, data=data, timeout=180)


def stream_lines(client: httpx.Client, audio: bytes = b"", /, **fields: Any) -> tuple[httpx.Response, list[Any]]:
    data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
    data["stream_audio"] = "true"
    files = {"file": ("question.wav", audio or spoken("fox"))}
    with client.stream("POST", "/v1/dialogue", files=files, data=data, timeout=180) as response:
        if response.status_code != 200:
            response.read()
            return response, []
        lines = [json.loads(line) for line in response.iter_lines() if line]
    return response, lines


def assert_detail(response: httpx.Response, status: int, detail: str | None = None) -> dict[str, Any]:
    """An HTTP error as the original's clients read it: `{"detail": "…"}` (speechq's `error` beside it)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    if detail is not None:
        assert body["detail"] == detail
    return body


def stored_request(stack: Stack, job_id: str) -> dict[str, Any]:
    redis = Redis.from_url(stack.redis_url, decode_responses=True)
    request: dict[str, Any] = json.loads(str(redis.hget(keys.job(job_id), "request")))
    return request


def test_the_answer_is_the_original_dialogue_response(client: httpx.Client, stack: Stack) -> None:
    # What the original dropped: `prompt`, nulls and unknown keys in generation_config (its own `tfs_z`
    # too, and values within its bounds that speechq's job API refuses); `text`, `stream`, nulls and
    # unknown keys in synthesis_config.
    generation = {
        **CHAT,
        "prompt": "Say only the word banana.",
        "top_p": 0,
        "stop": [""],
        "seed": 2**40,
        "tfs_z": 0.5,
        "typical_p": None,
        "no_such_knob": 3,
    }
    synthesis = {"text": "Never spoken.", "stream": True, "response_format": "wav", "normalize": None, "emotion": "x"}
    response = post(client, instructions=SHORT, generation_config=generation, synthesis_config=synthesis)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = SpeechDialogueResponse.model_validate_json(response.content, strict=True)
    raw = response.json()
    assert isinstance(raw["transcript"], dict), "transcript is the original's object, not a string"

    transcript = body.transcript
    assert "fox" in transcript.text.lower() and transcript.language == "en"
    assert transcript.segments and [s.id for s in transcript.segments] == list(range(len(transcript.segments)))
    assert all(set(s) == {"id", "start", "end", "text"} for s in raw["transcript"]["segments"])
    assert transcript.text == " ".join(s.text for s in transcript.segments)
    assert all(s.start is not None and s.end is not None and s.start <= s.end for s in transcript.segments)

    assert body.response_text.strip() and "banana" not in body.response_text.lower()
    assert (body.response_format, body.media_type, body.sample_rate) == ("wav", "audio/wav", 24_000)
    assert body.reference_id is None
    pcm, rate = decode_audio(base64.b64decode(body.audio_base64), "wav")
    assert rate == 24_000 and len(pcm) / rate > 0.5

    request = stored_request(stack, raw["job_id"])
    config = request["generation_config"]
    assert (config["top_p"], config["stop"], config["seed"]) == (0, [], 2**40 % 2**32)
    assert "text" not in request["synthesis_config"] and "stream" not in request["synthesis_config"]
    assert request["instructions"] == SHORT


def test_the_stream_is_the_original_order(client: httpx.Client) -> None:
    # The original's `ogg` format, and its stream: metadata, transcript, one assistant_text, audio, done.
    response, lines = stream_lines(client, generation_config=CHAT, synthesis_config={"response_format": "ogg"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json", "the original's content type, not x-ndjson"
    events = [line["event"] for line in lines]
    chunks = events.count("audio_chunk")
    assert chunks >= 1
    assert events == ["metadata", "transcript", "assistant_text"] + ["audio_chunk"] * chunks + ["done"], events

    metadata = lines[0]["data"]
    assert (metadata["response_format"], metadata["media_type"], metadata["sample_rate"]) == (
        "ogg",
        "audio/ogg",
        48_000,
    )
    assert "reference_id" not in metadata, "the original left reference_id out when there was none"
    transcript = SpeechTranscriptionResponse.model_validate(lines[1]["data"], strict=True)
    assert "fox" in transcript.text.lower() and transcript.segments
    reply = lines[2]["data"]
    assert set(reply) == {"text"} and reply["text"].strip()
    assert lines[-1] == {"event": "done", "data": lines[-1]["data"]} and lines[-1]["data"]["status"] == "succeeded"

    audio = b"".join(base64.b64decode(line["data"]["audio_base64"]) for line in lines[3:-1])
    pcm, rate = decode_audio(audio, "ogg")
    result = client.get(f"/v1/jobs/{response.headers['x-job-id']}/result").json()
    assert reply["text"] == result["response_text"], "the one assistant_text is the whole reply"
    assert rate == 48_000 and abs(len(pcm) / rate - result["duration"]) < 0.2


@pytest.mark.parametrize(
    ("field", "value", "detail"),
    [
        ("generation_config", "{not json", "Invalid JSON for 'generation_config'"),
        ("synthesis_config", '{"format": ', "Invalid JSON for 'synthesis_config'"),
        ("generation_config", "[1, 2]", "Field 'generation_config' must be a JSON object"),
        ("synthesis_config", '"wav"', "Field 'synthesis_config' must be a JSON object"),
        ("generation_config", " null", "Field 'generation_config' must be a JSON object"),
    ],
)
def test_bad_json_in_a_config_is_the_original_400(client: httpx.Client, field: str, value: str, detail: str) -> None:
    body = assert_detail(post(client, **{field: value}), 400, detail)
    assert body["error"]["param"] == field


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 4097}, "max_tokens"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"repeat_penalty": -1}, "repeat_penalty"),
        ({"seed": -1}, "seed"),
        ({"min_p": -0.5}, "min_p"),
        ({"tfs_z": -1}, "tfs_z"),
        ({"typical_p": -1}, "typical_p"),
        ({"stop": "END"}, "stop"),
        ({"model": 7}, "model"),
    ],
)
def test_generation_overrides_outside_the_original_bounds_are_its_400(
    client: httpx.Client, overrides: dict[str, Any], param: str
) -> None:
    body = assert_detail(post(client, generation_config=overrides), 400, "Invalid generation overrides supplied")
    assert body["error"]["param"] == f"generation_config.{param}"


def test_generation_overrides_within_the_original_bounds_are_taken() -> None:
    # The original's GenerationRequest accepted these; each reaches the sampler as close as it allows.
    params = legacy_generation({"temperature": 5, "top_p": 0, "stop": ["", "END"], "seed": 2**40, "tfs_z": 2, "x": 1})
    assert params.model_fields_set == {"temperature", "top_p", "stop", "seed"}, "only the fields sent are applied"
    assert (params.temperature, params.top_p, params.stop, params.seed) == (5, 0, ["END"], 2**40 % 2**32)
    assert legacy_generation({"prompt": "ignored", "stop": None, "max_tokens": "12"}).model_dump(
        exclude_unset=True
    ) == {"max_tokens": 12}


@pytest.mark.parametrize("empty", ["null", ""])
def test_a_null_or_empty_config_is_no_config(client: httpx.Client, empty: str) -> None:
    # Read as {}: the request goes on to the next check (a bad value in the other config), where the
    # original's `_parse_json_field` would have refused the field itself.
    response = post(client, generation_config=empty, synthesis_config={"voice": "darth"})
    assert response.status_code == 422 and response.json()["error"]["param"] == "synthesis_config.voice"
    response = post(client, generation_config={"top_p": 7}, synthesis_config=empty)
    assert_detail(response, 400, "Invalid generation overrides supplied")


def test_an_unregistered_model_is_still_a_404(client: httpx.Client) -> None:
    for name in ("no-such-model", "/srv/models/private.gguf"):
        body = assert_detail(post(client, generation_config={"model": name}), 404)
        assert body["error"]["code"] == "model_not_found" and name not in body["detail"]


def test_an_empty_upload_is_the_original_400(client: httpx.Client) -> None:
    response = client.post("/v1/dialogue", files={"file": ("empty.wav", b"")}, data={"generation_config": "{not json"})
    assert_detail(response, 400, "Uploaded audio file was empty")  # checked before the configs, as the original


def test_a_failure_before_the_stream_starts_is_an_http_error(client: httpx.Client) -> None:
    # Not audio at all: refused before any job.
    response, _ = stream_lines(client, b"plain text, not a recording " * 20, generation_config=CHAT)
    assert_detail(response, 415)
    # No speech in it: the transcription stage ends the dialogue before the first line.
    silence = encode(np.zeros(24_000, np.float32), 24_000)
    for order in ("false", "true"):  # the original's order, and speechq's pipelined one
        response, _ = stream_lines(client, silence, generation_config=CHAT, pipelined=order)
        assert "no speech" in assert_detail(response, 400)["detail"]


def test_a_speech_stage_failing_is_the_original_503(client: httpx.Client) -> None:
    # OpenAudio is at a closed port in the test stack: the reply is written, then speaking it fails, before
    # any audio: an HTTP error, not a 200 stream carrying an error. The original answered its speech
    # services failing with 503.
    speech = {"model": "openaudio-s1-mini"}
    response, lines = stream_lines(client, generation_config=CHAT, synthesis_config=speech)
    assert not lines
    body = assert_detail(response, 503)
    assert body["error"]["code"] == "upstream_error" and "synthesis failed" in body["detail"]


def test_a_generation_stage_failing_before_the_stream_is_an_http_error(client: httpx.Client) -> None:
    # A registered model whose file the worker lacks: the generation stage fails.
    response, lines = stream_lines(client, generation_config={"model": MISSING_MODEL, "max_tokens": 8})
    assert not lines and response.status_code >= 500
    assert_detail(response, response.status_code)


@pytest.fixture(scope="module")
def secured(stack: Stack, logs_dir: Path) -> Iterator[str]:
    api, url = start_api({**stack.env, "API_KEY_ENABLED": "true", "API_KEYS": "sk-dialogue-compat-0123"}, logs_dir)
    try:
        yield url
    finally:
        api.stop()


def test_a_wrong_key_is_the_original_403(secured: str) -> None:
    files = {"file": ("question.wav", spoken("fox"))}
    wrong = httpx.post(f"{secured}/v1/dialogue", files=files, headers={"X-API-Key": "sk-wrong"}, timeout=30)
    assert_detail(wrong, 403, "Invalid API key")
    assert_detail(httpx.post(f"{secured}/v1/dialogue", files=files, timeout=30), 401)
