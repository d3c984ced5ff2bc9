"""Streamed one-shot audio in OpenAI's shapes, read by the official `openai` client: a transcription as
`transcript.text.delta`… `transcript.text.done`, speech as `speech.audio.delta`… `speech.audio.done`."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from functools import cache
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai.types.audio import Transcription, TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent

from tests.audio import SENTENCES, as_wav, decode_audio, speak, spoken, wer
from tests.conftest import Stack
from tests.records import cancelled_soon
from tests.stack import nothing_logged_at_error

PASSAGE = (
    "The museum opens at nine in the morning. Visitors can buy tickets at the front desk. "
    "The gallery on the second floor shows paintings from Spain."
)


@pytest.fixture
def oai(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(autouse=True)
def quiet_logs(stack: Stack) -> Iterator[None]:
    """A client that leaves mid-stream, or a job that fails, is an ordinary end: nothing the API or the worker
    logs meanwhile is at ERROR."""
    with nothing_logged_at_error(stack.api, stack.worker):
        yield


@cache
def long_speech(seconds: float) -> bytes:
    pcm, rate = speak(" ".join(SENTENCES.values()))
    return as_wav(np.tile(pcm, int(seconds * rate / pcm.size) + 1), rate)


def sse_data(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON of each `data:` line of a server-sent event stream (what the client hands back raw)."""
    for line in lines:
        if line.startswith("data:"):
            yield json.loads(line.removeprefix("data:").strip())


def test_a_streamed_transcription_sends_a_delta_per_segment_then_the_whole_text(
    oai: openai.OpenAI, client: httpx.Client
) -> None:
    pcm, rate = speak(" ".join(SENTENCES.values()))
    stream = oai.audio.transcriptions.create(
        model="whisper-tiny.en",
        file=("four.wav", as_wav(pcm, rate)),
        stream=True,
        extra_body={"service_tier": "flex"},
    )
    assert stream.response.headers["content-type"].startswith("text/event-stream")
    job = client.get(f"/v1/jobs/{stream.response.headers['x-job-id']}").json()
    assert job["kind"] == "transcribe" and job["service_tier"] == "flex"
    events = list(stream)
    deltas = [e for e in events if isinstance(e, TranscriptionTextDeltaEvent)]
    done = events[-1]
    assert isinstance(done, TranscriptionTextDoneEvent)
    assert len(deltas) >= 2, "the sentences are decoded (and sent) as several segments"
    assert len(deltas) == len(events) - 1
    assert "".join(d.delta for d in deltas) == done.text
    assert wer(" ".join(SENTENCES.values()), done.text) <= 0.15, done.text
    assert done.usage is not None and done.usage.type == "tokens"
    assert done.usage.input_tokens >= 50 * 10, "about 50 audio tokens a second, of over 10 s"
    assert 20 < done.usage.output_tokens < 200
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens


def test_whisper_1_ignores_stream_as_at_openai(oai: openai.OpenAI) -> None:
    raw = oai.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("fox.wav", spoken("fox")), stream=True
    )
    assert raw.headers["content-type"] == "application/json"
    transcription = Transcription.model_validate_json(raw.http_response.read())
    assert wer(SENTENCES["fox"], transcription.text) <= 0.15, transcription.text


def test_a_transcription_failing_before_any_text_is_an_http_error(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.audio.transcriptions.create(
            model="whisper-tiny.en", file=("fox.wav", spoken("fox")), language="fr", stream=True
        )
    assert caught.value.code == "invalid_input" and "English" in caught.value.message


def test_streamed_speech_is_the_same_audio_as_the_whole_answer(oai: openai.OpenAI) -> None:
    whole = oai.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input=PASSAGE, response_format="wav")
    with oai.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input=PASSAGE, response_format="wav", stream_format="sse"
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_data(response.iter_lines()))
    deltas, done = events[:-1], events[-1]
    assert len(deltas) >= 3, "a delta per sentence at least"
    assert {e["type"] for e in deltas} == {"speech.audio.delta"}
    assert done == {
        "type": "speech.audio.done",
        "usage": {"input_tokens": len(PASSAGE.split()), "output_tokens": 0, "total_tokens": len(PASSAGE.split())},
    }
    streamed, rate = decode_audio(b"".join(base64.b64decode(e["audio"]) for e in deltas), "wav")
    expected, expected_rate = decode_audio(whole.content, "wav")
    assert rate == expected_rate == 24_000
    assert abs(len(streamed) - len(expected)) <= 0.05 * len(expected), (len(streamed), len(expected))


def test_a_speech_stream_closed_early_cancels_its_job(oai: openai.OpenAI, stack: Stack) -> None:
    marker = f"closed-{uuid.uuid4().hex[:8]}"
    text = f"{marker}. " + " ".join(SENTENCES.values()) * 12
    with oai.audio.speech.with_streaming_response.create(
        model="hibari", voice="heart", input=text, response_format="pcm", stream_format="sse"
    ) as response:
        events = sse_data(response.iter_lines())
        for _ in range(2):
            assert next(events)["type"] == "speech.audio.delta"  # the synthesis is under way
    cancelled_soon(stack, marker, time.monotonic())


def test_a_transcription_stream_closed_early_cancels_its_job(oai: openai.OpenAI, stack: Stack) -> None:
    marker = f"closed-{uuid.uuid4().hex[:8]}"
    stream = oai.audio.transcriptions.create(
        model="whisper-tiny.en", file=(f"{marker}.wav", long_speech(240)), stream=True
    )
    with stream:
        assert next(iter(stream)).type == "transcript.text.delta"
    cancelled_soon(stack, marker, time.monotonic())


def test_a_client_gone_before_the_first_text_cancels_the_transcription(stack: Stack) -> None:
    """The route waits for the first segment before it answers (so that audio the worker cannot decode is an
    HTTP error): a client that leaves meanwhile cancels the job too. The worker takes seconds to decode four
    minutes of audio and the first 30 s window; should the first text come sooner, closing leaves mid-stream,
    with the same end."""
    marker = f"gone-{uuid.uuid4().hex[:8]}"
    form = {"model": "whisper-tiny.en", "stream": "true"}
    with httpx.Client(base_url=stack.url, timeout=httpx.Timeout(60, read=0.5)) as client, suppress(httpx.ReadTimeout):
        with client.stream(
            "POST", "/v1/audio/transcriptions", files={"file": (f"{marker}.wav", long_speech(240))}, data=form
        ):
            pass
    cancelled_soon(stack, marker, time.monotonic())


def test_a_transcription_cancelled_mid_stream_ends_with_an_error(oai: openai.OpenAI, client: httpx.Client) -> None:
    """A failure after the stream started ends it with the error envelope, as a streamed chat completion's does,
    and the client raises it."""
    stream = oai.audio.transcriptions.create(model="whisper-tiny.en", file=("long.wav", long_speech(240)), stream=True)
    with stream:
        events = iter(stream)
        assert next(events).type == "transcript.text.delta"
        client.delete(f"/v1/jobs/{stream.response.headers['x-job-id']}")
        with pytest.raises(openai.APIError) as caught:
            for event in events:
                assert event.type == "transcript.text.delta"  # decoded before the cancel reached the worker
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "conflict"
    assert "cancelled" in caught.value.message


def test_a_speech_cancelled_mid_stream_ends_with_an_error(oai: openai.OpenAI, client: httpx.Client) -> None:
    text = " ".join(SENTENCES.values()) * 12
    with oai.audio.speech.with_streaming_response.create(
        model="hibari", voice="heart", input=text, response_format="pcm", stream_format="sse"
    ) as response:
        events = sse_data(response.iter_lines())
        assert next(events)["type"] == "speech.audio.delta"
        client.delete(f"/v1/jobs/{response.headers['x-job-id']}")
        rest = list(events)
    assert {e.get("type") for e in rest[:-1]} <= {"speech.audio.delta"}
    assert rest[-1]["error"]["code"] == "conflict" and "cancelled" in rest[-1]["error"]["message"]


def test_bad_streamed_requests_get_the_usual_4xx(oai: openai.OpenAI) -> None:
    speech: dict[str, Any] = {"model": "tts-1", "voice": "alloy", "input": "Hi there."}
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        oai.audio.speech.create(**speech, extra_body={"stream_format": "bogus"})
    assert refused.value.param == "stream_format" and "stream_format" in refused.value.message
    with pytest.raises(openai.NotFoundError) as unknown:
        oai.audio.speech.create(**{**speech, "model": "tts-9"}, stream_format="sse")
    assert unknown.value.code == "model_not_found" and unknown.value.param == "model"

    with pytest.raises(openai.NotFoundError) as unknown:
        oai.audio.transcriptions.create(model="whisper-huge-v9", file=("fox.wav", spoken("fox")), stream=True)
    assert unknown.value.code == "model_not_found" and unknown.value.param == "model"
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        oai.audio.transcriptions.create(
            model="whisper-tiny.en", file=("fox.wav", spoken("fox")), extra_body={"stream": "maybe"}
        )
    assert refused.value.param == "stream"
