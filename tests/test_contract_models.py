"""The result and event models of `contract/` on their own: the JSON they write and read, without a stack."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from api.schemas import JobPublic, job_public
from contract.dialogue import AssistantDelta, AssistantFinal, DialogueRequest
from contract.errors import UpstreamTimeout
from contract.events import Done, Progress, event_data
from contract.generation import GenerationResult, GenerationTimings, Usage
from contract.jobs import EventType, JobKind, JobRecord, JobStatus
from contract.results import parse_result, result_of
from contract.synthesis import AudioChunk, SynthesisResult, SynthesizeRequest
from contract.transcription import TranscriptionResult, TranscriptionTimings, TranscriptSegment, Word
from workers.audio_out import AudioEncoder, ChunkSender

GENERATION = {
    "text": "Hi!",
    "model": "smollm2-135m-instruct",
    "finish_reason": "stop",
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    "timings": {"seconds": 0.1, "first_token_seconds": None, "tokens_per_second": 20.0},
}
SYNTHESIS = {
    "response_format": "wav",
    "media_type": "audio/wav",
    "sample_rate": 24_000,
    "duration": 0.5,
    "bytes": 24_044,
    "chunks": 2,
    "model": "hibari",
    "voice": "heart",
    "reference_id": None,
    "characters": 3,
    "timings": {"seconds": 0.2, "first_chunk_seconds": 0.1, "real_time_factor": 0.4},
}


class RecordedRun:
    """A `JobContext` that keeps the events it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def emit(self, event: EventType, data: BaseModel) -> None:
        self.events.append((str(event), data))

    def check(self) -> None:
        """Never stops."""


def transcript(**extra: Any) -> TranscriptionResult:
    segment = TranscriptSegment(id=0, start=0.0, end=1.0, text="Hello.", **extra)
    return TranscriptionResult(
        text="Hello.",
        language="en",
        duration=1.0,
        task="transcribe",
        segments=[segment],
        model="whisper-tiny.en",
        timings=TranscriptionTimings(seconds=0.3),
    )


def test_usage_totals_and_a_generation_result_round_trips() -> None:
    assert Usage.of(5, 2) == Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7)
    assert GenerationResult.model_validate(GENERATION).model_dump(mode="json") == GENERATION
    timings = GenerationTimings(seconds=0.1, first_token_seconds=None, tokens_per_second=None)
    assert timings.model_dump() == {"seconds": 0.1, "first_token_seconds": None, "tokens_per_second": None}


def test_a_transcript_leaves_out_what_its_engine_or_options_did_not_give() -> None:
    plain = transcript().model_dump(mode="json")
    assert "words" not in plain and "language_probability" not in plain and "engine" not in plain
    assert plain["segments"] == [{"id": 0, "start": 0.0, "end": 1.0, "text": "Hello."}]
    assert plain["timings"] == {"seconds": 0.3}
    worded = transcript(words=[Word(word="Hello.", start=0.0, end=0.9)])
    worded.words = worded.segments[0].words
    dumped = worded.model_dump(mode="json")
    assert dumped["words"] == [{"word": "Hello.", "start": 0.0, "end": 0.9}] == dumped["segments"][0]["words"]
    assert TranscriptionResult.model_validate(dumped).model_dump(mode="json") == dumped


def test_a_remote_services_own_segment_keys_are_kept() -> None:
    segment = TranscriptSegment.model_validate({"id": 0, "start": 0, "end": 1, "text": "Hi", "speaker": "A"})
    assert segment.model_dump()["speaker"] == "A"
    assert segment.brief().model_dump() == {"id": 0, "start": 0.0, "end": 1.0, "text": "Hi"}


def test_a_synthesis_result_says_response_format_and_still_reads_format() -> None:
    assert SynthesisResult.model_validate(SYNTHESIS).model_dump(mode="json") == SYNTHESIS
    legacy = {("format" if key == "response_format" else key): value for key, value in SYNTHESIS.items()}
    assert SynthesisResult.model_validate(legacy).model_dump(mode="json") == SYNTHESIS


@pytest.mark.parametrize(
    ("kind", "data", "model"),
    [
        (JobKind.chat, GENERATION, GenerationResult),
        (JobKind.synthesize, SYNTHESIS, SynthesisResult),
        (JobKind.transcribe, transcript().model_dump(mode="json"), TranscriptionResult),
    ],
)
def test_each_kind_reads_its_own_result_and_refuses_anothers(
    kind: JobKind, data: dict[str, Any], model: type[BaseModel]
) -> None:
    assert isinstance(parse_result(kind, data), model)
    other = JobKind.transcribe if kind != JobKind.transcribe else JobKind.generate
    with pytest.raises(ValidationError):
        parse_result(other, data)


def test_the_job_routes_answer_the_typed_result_unchanged() -> None:
    job = JobRecord(
        id="job_1",
        kind=JobKind.synthesize,
        status=JobStatus.succeeded,
        owner="k",
        request={},
        times={"created_at": 1.0},
        result=SYNTHESIS,
    )
    public = job_public(job)
    assert isinstance(public.result, SynthesisResult)
    wire = public.model_dump(mode="json")
    assert wire["result"] == SYNTHESIS
    assert JobPublic.model_validate(wire).model_dump(mode="json") == wire
    assert result_of(job, SynthesisResult) == public.result


def test_progress_is_a_fraction() -> None:
    with pytest.raises(ValidationError):
        Progress(fraction=1.5, stage="synthesizing")


def test_chunks_are_numbered_in_order_and_empty_ones_are_not_sent() -> None:
    run = RecordedRun()
    encoder = AudioEncoder("pcm", 16_000)
    chunks = ChunkSender(run, encoder, started=0.0)
    chunks.send(encoder.encode(np.zeros(1_600, np.float32), 16_000), "One.")
    chunks.send(b"", "nothing")
    chunks.send(encoder.encode(np.zeros(800, np.float32), 16_000), None)
    assert [event for event, _ in run.events] == [EventType.audio_chunk, EventType.audio_chunk]
    sent = [data for _, data in run.events]
    assert all(isinstance(chunk, AudioChunk) for chunk in sent)
    assert [(c.index, c.text, c.format, c.sample_rate) for c in sent] == [
        (0, "One.", "pcm", 16_000),
        (1, None, "pcm", 16_000),
    ]
    assert sent[0].end == 0.1 and sent[1].end == 0.15 and len(sent[0].decoded()) == 3_200
    assert chunks.count == 2 and chunks.first is not None


def test_each_events_data_reads_as_its_model() -> None:
    done = event_data(EventType.done, {"status": "cancelled"})
    assert isinstance(done, Done) and done.status == JobStatus.cancelled
    error = event_data(EventType.error, {"type": "upstream_timeout", "message": "OpenAudio took too long"})
    assert isinstance(error.failure(), UpstreamTimeout) and error.failure().message == "OpenAudio took too long"
    assert event_data(EventType.error, {"type": "made_up", "message": "m"}).failure().code == "internal_error"
    assert event_data(EventType.assistant_text, {"delta": "Hi"}) == AssistantDelta(delta="Hi")
    assert event_data(EventType.assistant_text, {"text": "Hi.", "final": True}) == AssistantFinal(text="Hi.")
    assert isinstance(event_data(EventType.progress, {"fraction": 0.5, "stage": "decoding"}), Progress)
    with pytest.raises(ValidationError):
        event_data(EventType.done, {"status": "half-done"})
    with pytest.raises(KeyError):  # a result's model is its job kind's: `parse_result`
        event_data(EventType.result, GENERATION)


def test_a_dialogue_keeps_its_speech_options_and_speaks_each_sentence_with_them() -> None:
    resolved = SynthesizeRequest(text="a", model="hibari", voice="hibari", response_format="mp3", sample_rate=24_000)
    options = resolved.model_dump(mode="json", exclude={"text"})  # as the API stores it
    request = DialogueRequest.model_validate({"synthesis_config": options})
    assert request.synthesis_config.model_dump(mode="json") == options
    spoken = request.speech("Hello there.")
    assert (spoken.text, spoken.response_format, spoken.sample_rate) == ("Hello there.", "pcm", 24_000)
    assert spoken.model_dump(exclude={"text", "response_format"}) == resolved.model_dump(
        exclude={"text", "response_format"}
    )
    with pytest.raises(ValidationError):  # the text spoken is the answer's, never the request's
        DialogueRequest.model_validate({"synthesis_config": {**options, "text": "hi"}})
    with pytest.raises(ValidationError):
        DialogueRequest.model_validate({"synthesis_config": {**options, "pitch": 2}})
