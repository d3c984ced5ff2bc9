"""Clients of the original Gemma 3 Speech API keep working: its speech-to-text and text-to-speech routes,
over HTTP and WebSocket, checked against models of the original's own schemas and client loops (README: Migrating).

The models below restate `app/schemas/speech.py` of the original (78b0199) in strict mode, so an answer
that renames, retypes or drops one of its keys fails; speechq may add keys. Requests are built the way
its clients built them: from its request model, nulls included.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PositiveInt
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.audio import SENTENCES, decode_audio, spoken, wer
from tests.conftest import Stack
from tests.fake_servers import serve
from tests.stack import private_stack, start_api
from tests.test_openaudio import API_KEY as OPENAUDIO_KEY
from tests.test_openaudio import RATE as OPENAUDIO_RATE
from tests.test_openaudio import FishSpeechServer, problems

KEY = "sk-seed-speech-0123456789"
SHORT = "Please close the window before you leave the room."
STRICT = ConfigDict(strict=True, extra="allow")  # no retyping; added keys are speechq's right


# --- the original's models (app/schemas/speech.py) ----------------------------------------------------


class SpeechTranscriptionSegment(BaseModel):
    model_config = STRICT
    id: int | None = None
    start: float | None = None
    end: float | None = None
    text: str


class SpeechTranscriptionResponse(BaseModel):
    model_config = STRICT
    text: str
    language: str | None = None
    segments: list[SpeechTranscriptionSegment] = Field(default_factory=list)


class SpeechSynthesisRequest(BaseModel):
    """What the original's clients sent (its own request model): `model_dump(by_alias=True)` is the body."""

    model_config = ConfigDict(populate_by_name=True)
    text: str = Field(validation_alias=AliasChoices("text", "input"))
    format: str | None = Field(default=None, alias="response_format")
    sample_rate: PositiveInt | None = None
    reference_id: str | None = None
    normalize: bool | None = None
    references: list[str] | None = None
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    stream: bool = False


class SpeechSynthesisResponse(BaseModel):
    model_config = STRICT
    audio_base64: str
    response_format: str
    media_type: str
    sample_rate: PositiveInt
    reference_id: str | None = None


# The original's WebSocket events (app/api/v1/speech.py): dicts, modelled here.
class StreamMetadata(BaseModel):
    model_config = STRICT
    response_format: str
    media_type: str
    sample_rate: int
    reference_id: str | None = None


class AudioChunk(BaseModel):
    model_config = STRICT
    audio_base64: str


class ErrorEvent(BaseModel):
    model_config = STRICT
    event: str
    detail: str


# --- the original's client side ---------------------------------------------------------------------


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://") + path


def receive(ws: ClientConnection, timeout: float = 120) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(ws.recv(timeout=timeout))
    return message


def nothing_more(ws: ClientConnection) -> None:
    """The answer was complete: no event follows it (an original client would read it as the next answer)."""
    with pytest.raises(TimeoutError):
        ws.recv(timeout=1)


def transcribe_over(ws: ClientConnection, request: dict[str, Any]) -> dict[str, Any]:
    """The original's loop answers each request with exactly one message."""
    ws.send(json.dumps(request))
    return receive(ws)


def synthesize_over(ws: ClientConnection, request: dict[str, Any]) -> list[dict[str, Any]]:
    """One request's events, read as the original's server sent them: `synthesis` or `error` alone, or
    `metadata`, `audio_chunk`…, `done`."""
    ws.send(json.dumps(request))
    first = receive(ws)
    events = [first]
    if first["event"] == "metadata":
        while events[-1]["event"] != "done":
            events.append(receive(ws))
            assert events[-1]["event"] in ("audio_chunk", "done"), events[-1]
    return events


def ws_audio(request: dict[str, Any], name: str = "fox") -> dict[str, Any]:
    return {"audio_base64": base64.b64encode(spoken(name)).decode(), **request}


# --- speech to text ---------------------------------------------------------------------------------


@pytest.mark.parametrize("response_format", [None, "json", "text", "srt", "vtt", "verbose_json", "diarized_json"])
def test_speech_to_text_answers_the_transcript_object_whatever_the_format(
    client: httpx.Client, response_format: str | None
) -> None:
    form = {"language": "en", "prompt": "A sentence about a fox.", "temperature": "0"}
    if response_format is not None:
        form["response_format"] = response_format
    response = client.post("/v1/speech-to-text", files={"file": ("fox.wav", spoken("fox"), "audio/wav")}, data=form)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    answer = SpeechTranscriptionResponse.model_validate(response.json())
    assert wer(SENTENCES["fox"], answer.text) <= 0.15, answer.text
    assert answer.language == "en" and answer.segments
    assert all(s.start is not None and s.end is not None and s.end > s.start for s in answer.segments)
    assert [s.id for s in answer.segments] == list(range(len(answer.segments)))


def test_speech_to_text_takes_blank_fields_as_defaults_and_any_prompt(client: httpx.Client) -> None:
    form = {"language": "", "prompt": "fox " * 2_000, "response_format": "", "temperature": ""}
    response = client.post("/v1/speech-to-text", files={"file": ("fox.wav", spoken("fox"))}, data=form)
    assert response.status_code == 200, response.text
    assert wer(SENTENCES["fox"], SpeechTranscriptionResponse.model_validate(response.json()).text) <= 0.15


def test_an_empty_upload_is_the_originals_400(client: httpx.Client) -> None:
    response = client.post("/v1/speech-to-text", files={"file": ("empty.wav", b"", "audio/wav")})
    assert response.status_code == 400
    assert response.json()["detail"] == "Uploaded audio file was empty"
    assert response.json()["error"]["code"] == "empty_file"


def test_speech_to_text_errors_carry_a_detail(client: httpx.Client) -> None:
    missing = client.post("/v1/speech-to-text", data={"language": "en"})
    assert missing.status_code == 422 and isinstance(missing.json()["detail"], list)
    not_audio = client.post("/v1/speech-to-text", files={"file": ("a.wav", b"plain text, not audio " * 40)})
    assert 400 <= not_audio.status_code < 500 and isinstance(not_audio.json()["detail"], str)


def test_speech_to_text_ws_answers_request_after_request_on_one_connection(stack: Stack) -> None:
    with connect(ws_url(stack.url, "/v1/speech-to-text/ws")) as ws:
        # Every response_format is passed on; the event's data is always the transcript object.
        for name, response_format in (("fox", "text"), ("report", "srt"), ("weather", "verbose_json")):
            request = {
                "filename": f"{name}.wav",
                "content_type": "audio/wav",
                "language": "en",
                "prompt": None,
                "response_format": response_format,
                "temperature": 0.0,
            }
            answer = transcribe_over(ws, ws_audio(request, name))
            assert answer["event"] == "transcript", answer
            transcript = SpeechTranscriptionResponse.model_validate(answer["data"])
            assert wer(SENTENCES[name], transcript.text) <= 0.15 and transcript.segments

        # Errors are one message each, and the connection stays open.
        refusals = [
            ({"language": "en"}, "Missing 'audio_base64' field."),
            ({"audio_base64": ""}, "Missing 'audio_base64' field."),
            ({"audio_base64": "abc"}, "Invalid base64 data supplied for 'audio_base64'."),
            ({"audio_base64": base64.b64encode(b"not audio at all " * 100).decode()}, None),
            (ws_audio({"temperature": 3}), None),
        ]
        for request, detail in refusals:
            error = ErrorEvent.model_validate(transcribe_over(ws, request))
            assert error.event == "error" and error.detail
            assert detail is None or error.detail == detail

        # Nulls are defaults; MIME base64 (line breaks every 76 characters) decodes as the original decoded it.
        mime = base64.encodebytes(spoken("library")).decode()
        nulls = {"filename": None, "content_type": None, "language": None, "prompt": None, "temperature": None}
        answer = transcribe_over(ws, {"audio_base64": mime, **nulls, "response_format": None})
        assert answer["event"] == "transcript", answer
        assert wer(SENTENCES["library"], answer["data"]["text"]) <= 0.15
        nothing_more(ws)


# --- text to speech ---------------------------------------------------------------------------------


def audio_of(answer: SpeechSynthesisResponse) -> tuple[Any, int]:
    fmt = {"ogg": "opus"}.get(answer.response_format, answer.response_format)
    return decode_audio(base64.b64decode(answer.audio_base64), fmt, answer.sample_rate)


def test_text_to_speech_takes_the_originals_request_model_nulls_and_all(client: httpx.Client) -> None:
    body = SpeechSynthesisRequest(text=SHORT).model_dump(by_alias=True)
    assert body["response_format"] is None and body["references"] is None and body["normalize"] is None
    response = client.post("/v1/text-to-speech", json=body)
    assert response.status_code == 200, response.text
    answer = SpeechSynthesisResponse.model_validate(response.json())
    assert "reference_id" in response.json() and answer.reference_id is None
    assert (answer.response_format, answer.media_type, answer.sample_rate) == ("wav", "audio/wav", 24_000)
    pcm, rate = audio_of(answer)
    assert rate == 24_000 and len(pcm) / rate > 1.5
    missing = client.post("/v1/text-to-speech", json={"format": "wav"})
    assert missing.status_code == 422 and missing.json()["detail"]


def test_aliases_unknown_fields_and_ogg(client: httpx.Client) -> None:
    body = {
        "input": SHORT,
        "format": "ogg",
        "reference_id": "",
        "speaker_boost": True,
        "voice_settings": {"style": 1},
        "stream": None,
    }
    response = client.post("/v1/text-to-speech", json=body)
    assert response.status_code == 200, response.text
    answer = SpeechSynthesisResponse.model_validate(response.json())
    # The original named the format as asked and served Ogg as audio/ogg: speechq's Ogg is Opus in Ogg.
    assert (answer.response_format, answer.media_type, answer.sample_rate) == ("ogg", "audio/ogg", 48_000)
    pcm, rate = audio_of(answer)
    assert rate == 48_000 and len(pcm) / rate > 1.5
    # speechq's own job route stays strict.
    strict = client.post("/v1/jobs/synthesize", json={"text": SHORT, "speaker_boost": True})
    assert strict.status_code == 422


@pytest.mark.parametrize(
    ("fmt", "asked", "delivered"),
    [("ogg", 16_000, 48_000), ("mp3", 20_000, 22_050), ("wav", 4_000, 8_000), ("pcm", 11_025, 11_025)],
)
def test_any_positive_sample_rate_is_taken_and_the_answer_says_what_was_made(
    client: httpx.Client, fmt: str, asked: int, delivered: int
) -> None:
    body = SpeechSynthesisRequest(text=SHORT, format=fmt, sample_rate=asked).model_dump(by_alias=True)
    response = client.post("/v1/text-to-speech", json=body)
    assert response.status_code == 200, response.text
    answer = SpeechSynthesisResponse.model_validate(response.json())
    assert (answer.response_format, answer.sample_rate) == (fmt, delivered)
    pcm, rate = audio_of(answer)
    assert rate == delivered and len(pcm) / rate > 1.5


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"text": SHORT, "response_format": "wma"}, "response_format"),
        ({"text": SHORT, "format": "wma"}, "format"),
        ({"text": SHORT, "sample_rate": 0}, "sample_rate"),
        ({"text": SHORT, "references": ["UklGRg=="]}, "references"),  # cloning needs OpenAudio; hibari is fixed
    ],
)
def test_what_no_engine_here_can_do_is_a_4xx_with_a_detail(
    client: httpx.Client, body: dict[str, Any], param: str
) -> None:
    response = client.post("/v1/text-to-speech", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param and isinstance(response.json()["detail"], str)


def test_streamed_audio_carries_the_originals_headers(client: httpx.Client) -> None:
    cases = [
        ({"reference_id": "heart", "response_format": "wav"}, ("wav", "audio/wav", "24000", "heart")),
        ({"response_format": "ogg"}, ("ogg", "audio/ogg", "48000", None)),
    ]
    for extra, (fmt, media_type, rate, reference_id) in cases:
        body = SpeechSynthesisRequest.model_validate({"text": SHORT, "stream": True, **extra})
        with client.stream("POST", "/v1/text-to-speech", json=body.model_dump(by_alias=True)) as response:
            assert response.status_code == 200, response.read()
            audio = b"".join(response.iter_bytes())
        headers = response.headers
        assert (headers["x-audio-format"], headers["content-type"], headers["x-sample-rate"]) == (fmt, media_type, rate)
        assert headers.get("x-reference-id") == reference_id
        pcm, found = decode_audio(audio, {"ogg": "opus"}.get(fmt, fmt))
        assert found == int(rate) and len(pcm) / found > 1.5


def test_text_to_speech_ws_streams_by_default_and_serves_request_after_request(stack: Stack) -> None:
    with connect(ws_url(stack.url, "/v1/text-to-speech/ws")) as ws:
        # No `stream`: the original streamed, and `metadata` leaves out a reference_id there is none of.
        events = synthesize_over(ws, {"text": SHORT, "format": "flac", "sample_rate": 16_000})
        assert [e["event"] for e in events[:1] + events[-1:]] == ["metadata", "done"] and len(events) >= 3
        metadata = StreamMetadata.model_validate(events[0]["data"])
        assert "reference_id" not in events[0]["data"]
        assert (metadata.response_format, metadata.media_type, metadata.sample_rate) == ("flac", "audio/flac", 16_000)
        audio = b"".join(base64.b64decode(AudioChunk.model_validate(e["data"]).audio_base64) for e in events[1:-1])
        pcm, rate = decode_audio(audio, "flac")
        assert rate == 16_000 and len(pcm) / rate > 1.5

        # `stream: false`: one `synthesis` event, without reference_id when there is none.
        (event,) = synthesize_over(ws, {"text": SHORT, "stream": False, "format": "ogg"})
        assert event["event"] == "synthesis" and "reference_id" not in event["data"]
        synthesis = SpeechSynthesisResponse.model_validate(event["data"])
        assert (synthesis.response_format, synthesis.media_type) == ("ogg", "audio/ogg")

        (event,) = synthesize_over(
            ws, {"input": SHORT, "stream": False, "response_format": "mp3", "reference_id": "heart"}
        )
        assert SpeechSynthesisResponse.model_validate(event["data"]).reference_id == "heart"
        events = synthesize_over(ws, {"text": SHORT, "reference_id": "heart", "normalize": None, "references": None})
        assert StreamMetadata.model_validate(events[0]["data"]).reference_id == "heart"

        # Refusals are one `error` message each; the connection stays open for the next request.
        for request, detail in (
            ({"stream": True}, "Missing 'text' field."),
            ({"text": ""}, "Missing 'text' field."),
            ({"text": SHORT, "format": "wma"}, None),
        ):
            (error,) = synthesize_over(ws, request)
            assert ErrorEvent.model_validate(error).event == "error"
            assert detail is None or error["detail"] == detail
        ws.send("this is not JSON")
        assert receive(ws)["event"] == "error"

        (event,) = synthesize_over(ws, {"text": SHORT, "stream": None})  # the original read null as false
        assert event["event"] == "synthesis"
        nothing_more(ws)


# --- OpenAudio: references as the original sent them ---------------------------------------------------


@pytest.fixture(scope="module")
def openaudio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FishSpeechServer]]:
    server = FishSpeechServer()
    with (
        serve({"/v1/tts": server.tts}) as base,
        private_stack(
            tmp_path_factory.mktemp("openaudio"),
            "tts",
            TTS_MODEL="openaudio-s1-mini",
            OPENAUDIO_API_BASE=base,
            OPENAUDIO_API_KEY=OPENAUDIO_KEY,
            OPENAUDIO_TIMEOUT_SECONDS="10",
        ) as stack,
    ):
        yield stack.url, server


def test_references_as_base64_strings_reach_openaudio(openaudio: tuple[str, FishSpeechServer]) -> None:
    url, server = openaudio
    sample = spoken("fox")
    body = SpeechSynthesisRequest(
        text=SENTENCES["weather"],
        format="wav",
        reference_id="narrator-7",
        references=[base64.b64encode(sample).decode()],
        normalize=False,
        top_p=0.7,
    ).model_dump(by_alias=True)
    with httpx.Client(base_url=url, timeout=120) as client:
        response = client.post("/v1/text-to-speech", json=body)
        assert response.status_code == 200, response.text
        answer = SpeechSynthesisResponse.model_validate(response.json())
        with client.stream("POST", "/v1/text-to-speech", json={**body, "stream": True}) as streamed:
            assert streamed.status_code == 200
            assert streamed.headers["x-reference-id"] == "narrator-7"
            streamed.read()
    assert answer.reference_id == "narrator-7" and answer.sample_rate == OPENAUDIO_RATE
    sent = server.calls[0]["body"]
    assert problems(sent) == []
    assert sent["references"] == [{"audio": sample, "text": ""}]  # what the sample says is not known
    assert (sent["reference_id"], sent["normalize"], sent["top_p"]) == ("narrator-7", False, 0.7)


# --- keys ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(stack: Stack, logs_dir: Path) -> Iterator[str]:
    api, url = start_api({**stack.env, "API_KEY_ENABLED": "true", "API_KEYS": KEY}, logs_dir)
    try:
        yield url
    finally:
        api.stop()


def test_a_wrong_key_is_the_originals_403(secured: str) -> None:
    wrong = {"X-API-Key": "sk-wrong"}
    stt = httpx.post(f"{secured}/v1/speech-to-text", files={"file": ("a.wav", spoken("fox"))}, headers=wrong)
    tts = httpx.post(f"{secured}/v1/text-to-speech", json={"text": SHORT}, headers=wrong)
    for response in (stt, tts):
        assert (response.status_code, response.json()["detail"]) == (403, "Invalid API key")
    for path in ("/v1/speech-to-text/ws", "/v1/text-to-speech/ws"):
        with connect(ws_url(secured, path), additional_headers=wrong) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
