"""Every job kind's result and event data, as served, against the models in `contract/`: one small real
job per kind through the real API and worker, read back on every route that returns it (the job routes,
the OpenAI route, the original API's route). Each payload must validate and dump back to exactly what was sent, so
a key added, dropped or renamed on the wire fails here."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import httpx
import pytest
from openai.types.audio import TranscriptionVerbose
from pydantic import BaseModel, TypeAdapter
from websockets.sync.client import connect

from api.legacy.dialogue import LegacyDialogue
from api.legacy.speech import LegacySynthesis, LegacyTranscript
from api.openai.protocol import ChatCompletionResponse, CompletionResponse
from api.routes.generation import GenerateResponse
from api.schemas import DialogueResultPublic
from contract.dialogue import (
    AssistantDelta,
    AssistantFinal,
    DialogueMetadata,
    DialogueResult,
    HeardTranscript,
)
from contract.events import Done, ErrorData, Progress
from contract.generation import GenerationResult, Token
from contract.jobs import EventType
from contract.synthesis import AudioChunk, SynthesisResult
from contract.transcription import Segment, TranscriptionResult
from tests.audio import encode, speak
from tests.conftest import Stack
from tests.sse import read_events

M = TypeVar("M", bound=BaseModel)
WAV = {"response_format": "wav"}
LLM: dict[str, Any] = {"model": "smollm2-135m-instruct", "max_tokens": 6, "temperature": 0.0, "seed": 1}

# The data of each event type a worker writes; `queued` and `started` are the job store's own.
EVENT_DATA: dict[str, TypeAdapter[Any]] = {
    EventType.progress: TypeAdapter(Progress),
    EventType.error: TypeAdapter(ErrorData),
    EventType.done: TypeAdapter(Done),
    EventType.token: TypeAdapter(Token),
    EventType.segment: TypeAdapter(Segment),
    EventType.audio_chunk: TypeAdapter(AudioChunk),
    EventType.metadata: TypeAdapter(DialogueMetadata),
    EventType.transcript: TypeAdapter(HeardTranscript),
    EventType.assistant_text: TypeAdapter(AssistantDelta | AssistantFinal),
}


def exactly(model: type[M], data: Any) -> M:
    """`data` as `model`, which must dump back to the same JSON: nothing dropped, added or renamed."""
    parsed = model.model_validate(data)
    assert parsed.model_dump(mode="json") == data, f"{model.__name__} does not round-trip {data}"
    return parsed


def followed(client: httpx.Client, job_id: str, result: type[M]) -> tuple[M, list[str]]:
    """Read the job's whole event log (the stream ends with `done`), checking every event's data; returns
    the `result` event's data as `result`, and the event types in order."""
    events = read_events(client, job_id)
    types = [event.event for event in events]
    assert types[-1] == EventType.done and events[-1].json() == {"status": "succeeded"}, events[-3:]
    found: M | None = None
    for event in events:
        data = event.json()
        if event.event == EventType.result:
            found = exactly(result, data)
        elif event.event in EVENT_DATA:
            adapter = EVENT_DATA[event.event]
            assert adapter.dump_python(adapter.validate_python(data), mode="json") == data, (event.event, data)
    assert found is not None, types
    return found, types


def job_result(client: httpx.Client, job_id: str, result: type[M]) -> M:
    """The result in `GET /v1/jobs/{id}`, which must equal `GET /v1/jobs/{id}/result` for JSON results."""
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    return exactly(result, job["result"])


def created(response: httpx.Response) -> str:
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


@pytest.fixture(scope="module")
def one_second() -> bytes:
    pcm, rate = speak("Hello there.")
    return encode(pcm[: rate * 1], rate, "wav")


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("generate", {"prompt": "Say hi."}),
        ("chat", {"messages": [{"role": "user", "content": "Say hi."}]}),
        ("completion", {"prompt": "The sky is"}),
    ],
)
def test_generation_results_and_tokens(client: httpx.Client, kind: str, body: dict[str, Any]) -> None:
    job_id = created(client.post(f"/v1/jobs/{kind}", json=LLM | body))
    streamed, types = followed(client, job_id, GenerationResult)
    assert EventType.token in types
    assert job_result(client, job_id, GenerationResult) == streamed
    assert exactly(GenerationResult, client.get(f"/v1/jobs/{job_id}/result").json()) == streamed
    assert streamed.usage.total_tokens == streamed.usage.prompt_tokens + streamed.usage.completion_tokens
    assert 0 < streamed.usage.completion_tokens <= LLM["max_tokens"]


def test_generation_on_the_seed_and_openai_routes(client: httpx.Client) -> None:
    seed = client.post("/v1/generate", json={"prompt": "Say hi.", **LLM})
    assert seed.status_code == 200, seed.text
    job = job_result(client, seed.headers["X-Job-ID"], GenerationResult)
    assert exactly(GenerateResponse, seed.json()).generated_text == job.text

    chat = client.post("/v1/chat/completions", json={**LLM, "messages": [{"role": "user", "content": "Say hi."}]})
    assert chat.status_code == 200, chat.text
    answer = exactly(ChatCompletionResponse, chat.json())
    job = job_result(client, chat.headers["X-Job-ID"], GenerationResult)
    assert answer.choices[0].message.content == job.text and answer.usage == job.usage
    assert answer.choices[0].finish_reason == job.finish_reason

    completion = client.post("/v1/completions", json={**LLM, "prompt": "The sky is"})
    assert completion.status_code == 200, completion.text
    text = exactly(CompletionResponse, completion.json())
    job = job_result(client, completion.headers["X-Job-ID"], GenerationResult)
    assert text.choices[0].text == job.text and text.usage == job.usage


def test_transcription_result_and_segments_on_every_route(client: httpx.Client, one_second: bytes) -> None:
    upload = {"file": ("hello.wav", one_second, "audio/wav")}
    words = {"timestamp_granularities[]": "word"}
    job_id = created(client.post("/v1/jobs/transcribe", files=upload, data=words))
    streamed, types = followed(client, job_id, TranscriptionResult)
    assert EventType.segment in types and EventType.progress in types
    assert streamed.words is not None and streamed.segments and streamed.segments[0].words is not None
    assert job_result(client, job_id, TranscriptionResult) == streamed
    assert exactly(TranscriptionResult, client.get(f"/v1/jobs/{job_id}/result").json()) == streamed

    verbose = client.post(
        "/v1/audio/transcriptions", files=upload, data={"model": "whisper-1", "response_format": "verbose_json"}
    )
    assert verbose.status_code == 200, verbose.text
    job = job_result(client, verbose.headers["X-Job-ID"], TranscriptionResult)
    official = TranscriptionVerbose.model_validate(verbose.json())  # as the OpenAI client reads it
    assert official.text == job.text and official.duration == job.duration
    assert "words" not in verbose.json(), "no word timestamps were asked for"

    seed = client.post("/v1/speech-to-text", files=upload)
    assert seed.status_code == 200, seed.text
    job = job_result(client, seed.headers["X-Job-ID"], TranscriptionResult)
    assert exactly(LegacyTranscript, seed.json()) == LegacyTranscript.of(job)


def test_synthesis_result_says_response_format_on_every_route(client: httpx.Client) -> None:
    job_id = created(client.post("/v1/jobs/synthesize", json={"text": "Hi there.", "response_format": "wav"}))
    streamed, types = followed(client, job_id, SynthesisResult)
    assert types.count(EventType.audio_chunk) == streamed.chunks > 0
    assert streamed.response_format == "wav" and "format" not in streamed.model_dump()
    assert job_result(client, job_id, SynthesisResult) == streamed
    audio = client.get(f"/v1/jobs/{job_id}/result")
    assert audio.status_code == 200 and len(audio.content) == streamed.bytes
    assert audio.headers["content-type"] == streamed.media_type and audio.headers["x-audio-format"] == "wav"

    seed = client.post("/v1/text-to-speech", json={"text": "Hi there.", "response_format": "flac"})
    assert seed.status_code == 200, seed.text
    job = job_result(client, seed.headers["X-Job-ID"], SynthesisResult)
    answer = exactly(LegacySynthesis, seed.json())
    assert (answer.response_format, answer.media_type, answer.sample_rate) == (
        job.response_format,
        job.media_type,
        job.sample_rate,
    )

    speech = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi there.", "voice": "alloy"})
    assert speech.status_code == 200
    job = job_result(client, speech.headers["X-Job-ID"], SynthesisResult)
    assert job.response_format == "mp3" and job.media_type == speech.headers["content-type"]


def test_the_text_to_speech_websocket_done_event_keeps_its_format_key(client: httpx.Client, stack: Stack) -> None:
    with connect(stack.url.replace("http://", "ws://") + "/v1/text-to-speech/ws") as ws:
        ws.send(json.dumps({"text": "Hi there.", "format": "wav"}))
        messages: list[dict[str, Any]] = []
        while not messages or messages[-1]["event"] not in ("done", "error"):
            messages.append(json.loads(ws.recv(timeout=60)))
    done = messages[-1]["data"]
    job = job_result(client, done["job_id"], SynthesisResult)
    assert done == {
        "job_id": done["job_id"],
        "duration": job.duration,
        "chunks": job.chunks,
        "bytes": job.bytes,
        "sample_rate": job.sample_rate,
        "format": job.response_format,
    }


def test_dialogue_result_and_events_on_every_route(client: httpx.Client, one_second: bytes) -> None:
    fields = {"generation_config": json.dumps(LLM | {"max_tokens": 12}), "synthesis_config": json.dumps(WAV)}
    upload = {"file": ("hello.wav", one_second, "audio/wav")}
    job_id = created(client.post("/v1/jobs/dialogue", files=upload, data=fields, timeout=120))
    streamed, types = followed(client, job_id, DialogueResult)
    assert types.index(EventType.metadata) < types.index(EventType.transcript) < types.index(EventType.result)
    assert EventType.assistant_text in types and types.count(EventType.audio_chunk) == streamed.chunks > 0
    assert job_result(client, job_id, DialogueResult) == streamed
    public = exactly(DialogueResultPublic, client.get(f"/v1/jobs/{job_id}/result").json())
    assert public.audio_url == f"/v1/jobs/{job_id}/audio"
    assert DialogueResult.model_validate(public.model_dump(exclude={"audio_url"})) == streamed
    audio = client.get(public.audio_url)
    assert audio.status_code == 200 and audio.headers["x-audio-format"] == streamed.response_format == "wav"

    seed = client.post("/v1/dialogue", files=upload, data=fields, timeout=120)
    assert seed.status_code == 200, seed.text
    job = job_result(client, seed.headers["X-Job-ID"], DialogueResult)
    answer = exactly(LegacyDialogue, seed.json())
    assert (answer.response_text, answer.transcript.text) == (job.response_text, job.transcript)
    assert (answer.response_format, answer.sample_rate) == (job.response_format, job.sample_rate)
