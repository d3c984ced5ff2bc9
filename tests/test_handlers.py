"""The job handlers on their own: no Celery, no Redis. Each runs a real tiny model from `ModelCache` and
reports to a `JobContext` that records its events in a list, and stops the job when told to."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from config import Settings
from contract.catalog import Registry, registry, use_registry
from contract.dialogue import DialogueMetadata, HeardTranscript
from contract.errors import ContextOverflow, InvalidAudio, InvalidJobInput
from contract.events import Done
from contract.generation import ChatMessage, ChatRequest, GenerationResult, GenerationTimings, Token, Usage
from contract.jobs import EventType, JobKind, JobRecord, JobStatus
from contract.synthesis import AudioChunk, SynthesisResult, SynthesisTimings, SynthesizeRequest
from contract.transcription import TranscriptionResult, TranscriptionTimings, TranscriptSegment
from tests.audio import SENTENCES, decode_audio, spoken, wer
from workers.dialogue import run_dialogue_job
from workers.execution import JobCancelled
from workers.handlers import run_llm_job, run_stt_job, run_tts_job
from workers.models import ModelCache
from workers.stages import R, Stage

ROOT = Path(__file__).resolve().parents[1]
STORY = "Once upon a time, in a small village by the sea,"


class RecordingContext:
    """A `JobContext` that keeps every event (as JSON-ready data) and cancels the job at the `cancel_at`-th
    event of type `cancel_on`, or at the `cancel_at`-th `check()` when `cancel_on` is "check"."""

    def __init__(self, cancel_on: str | None = None, cancel_at: int = 1) -> None:
        self.events: list[tuple[str, Any]] = []
        self.checks = 0
        self.cancel_on = cancel_on
        self.cancel_at = cancel_at

    def emit(self, event: EventType, data: BaseModel) -> None:
        self.events.append((str(event), data.model_dump(mode="json")))
        if event == self.cancel_on and len(self.of(event)) >= self.cancel_at:
            raise JobCancelled()

    def check(self) -> None:
        self.checks += 1
        if self.cancel_on == "check" and self.checks >= self.cancel_at:
            raise JobCancelled()

    def of(self, event: EventType | str) -> list[Any]:
        return [data for kind, data in self.events if kind == event]


def job(kind: JobKind, **request: Any) -> JobRecord:
    return JobRecord(id=f"job_{kind}", kind=kind, status=JobStatus.running, owner="tester", request=request)


@pytest.fixture(scope="module")
def models() -> Iterator[ModelCache]:
    settings = Settings(
        _env_file=None,
        llm_models_dir=ROOT / "var" / "models",
        llm_n_ctx=512,
        llm_parallel=1,
        llm_n_threads=2,
        llm_stream_batch_seconds=0.0,  # one `token` event per delta: a cancel lands on a known event
        stt_n_threads=2,
    )
    previous = registry()
    use_registry(Registry.load(settings))
    yield ModelCache(settings)
    use_registry(previous)


# LLM ---------------------------------------------------------------------------------------------------


def test_llm_tokens_join_to_the_result_text(models: ModelCache) -> None:
    run = RecordingContext()
    result = run_llm_job(job(JobKind.completion, prompt=STORY, max_tokens=12, temperature=0), run, models)
    tokens = run.of(EventType.token)
    assert tokens and "".join(token["text"] for token in tokens) == result.text
    assert result.model == "gemma-3-270m" and 0 < result.usage.completion_tokens <= 12
    assert [kind for kind, _ in run.events] == [EventType.token] * len(tokens)  # nothing but text deltas


def test_a_cancel_raised_by_emit_stops_the_generation(models: ModelCache) -> None:
    run = RecordingContext(cancel_on=EventType.token, cancel_at=2)
    with pytest.raises(JobCancelled):
        run_llm_job(job(JobKind.completion, prompt=STORY, max_tokens=200, temperature=0), run, models)
    assert len(run.of(EventType.token)) == 2  # not one token more was reported
    # The slot it held is free again: the next generation runs.
    assert run_llm_job(job(JobKind.completion, prompt=STORY, max_tokens=2), RecordingContext(), models).text


def test_a_cancel_raised_by_check_stops_the_generation(models: ModelCache) -> None:
    run = RecordingContext(cancel_on="check")
    with pytest.raises(JobCancelled):
        run_llm_job(job(JobKind.completion, prompt=STORY, max_tokens=400, temperature=0), run, models)
    assert run.checks == 1 and len(run.of(EventType.token)) < 400


def test_a_prompt_longer_than_the_context_is_refused(models: ModelCache) -> None:
    with pytest.raises(ContextOverflow):
        run_llm_job(job(JobKind.completion, prompt="word " * 600, max_tokens=8), RecordingContext(), models)


# STT ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fox_wav() -> bytes:
    return spoken("fox")


def test_stt_segments_and_progress_make_the_transcript(models: ModelCache, fox_wav: bytes) -> None:
    run = RecordingContext()
    stt = job(JobKind.transcribe, model="whisper-tiny.en")
    result = run_stt_job(stt, run, models, inputs=lambda job_id: fox_wav if job_id == stt.id else None)
    segments = run.of(EventType.segment)
    assert [s["text"] for s in segments] == [s.text for s in result.segments] and segments
    assert wer(SENTENCES["fox"], result.text) <= 0.15
    fractions = [p["fraction"] for p in run.of(EventType.progress)]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and 0.5 < fractions[-1] <= 1.0


def test_stt_stops_at_a_cancel(models: ModelCache, fox_wav: bytes) -> None:
    run = RecordingContext(cancel_on=EventType.segment)
    with pytest.raises(JobCancelled):
        run_stt_job(job(JobKind.transcribe, model="whisper-tiny.en"), run, models, inputs=lambda _: fox_wav)
    assert len(run.of(EventType.segment)) == 1


def test_stt_refuses_missing_or_broken_audio(models: ModelCache) -> None:
    stt = job(JobKind.transcribe, model="whisper-tiny.en")
    with pytest.raises(InvalidJobInput, match="no longer stored"):
        run_stt_job(stt, RecordingContext(), models, inputs=lambda _: None)
    with pytest.raises(InvalidAudio):
        run_stt_job(stt, RecordingContext(), models, inputs=lambda _: b"RIFF this is not a wave file at all")


# TTS ---------------------------------------------------------------------------------------------------


def test_tts_chunks_are_numbered_and_decode_to_the_stored_audio(models: ModelCache) -> None:
    run = RecordingContext()
    stored: dict[str, bytes] = {}
    tts = job(
        JobKind.synthesize, text=f"{SENTENCES['fox']} {SENTENCES['report']}", model="hibari", response_format="mp3"
    )
    result = run_tts_job(tts, run, models, outputs=stored.__setitem__)
    chunks = run.of(EventType.audio_chunk)
    assert [c["index"] for c in chunks] == list(range(len(chunks))) == list(range(result.chunks))
    assert len(chunks) >= 2  # a chunk per sentence at least, not one at the end
    streamed = b"".join(base64.b64decode(c["audio"]) for c in chunks)
    pcm, rate = decode_audio(streamed, "mp3")
    assert rate == result.sample_rate and abs(pcm.size / rate - result.duration) < 0.1
    assert stored == {tts.id: stored[tts.id]} and len(stored[tts.id]) == result.bytes
    whole, _ = decode_audio(stored[tts.id], "mp3")
    assert abs(whole.size / rate - result.duration) < 0.1


def test_tts_stops_at_a_cancel_and_stores_nothing(models: ModelCache) -> None:
    run = RecordingContext(cancel_on=EventType.audio_chunk)
    stored: dict[str, bytes] = {}
    tts = job(JobKind.synthesize, text=f"{SENTENCES['fox']} {SENTENCES['report']}", model="hibari")
    with pytest.raises(JobCancelled):
        run_tts_job(tts, run, models, outputs=stored.__setitem__)
    assert len(run.of(EventType.audio_chunk)) == 1 and stored == {}


def test_tts_refuses_text_it_cannot_speak(models: ModelCache) -> None:
    stored: dict[str, bytes] = {}
    with pytest.raises(ValidationError, match="nothing to speak"):  # no letter at all: the request is invalid
        run_tts_job(job(JobKind.synthesize, text="... !!!"), RecordingContext(), models, stored.__setitem__)
    with pytest.raises(InvalidJobInput, match="nothing to speak"):  # letters, but none this English voice can say
        run_tts_job(
            job(JobKind.synthesize, text="你好", model="hibari"), RecordingContext(), models, stored.__setitem__
        )
    assert stored == {}


# Dialogue ----------------------------------------------------------------------------------------------

RATE = 16_000
HEARD = "What is the weather like?"
ANSWER_DELTAS = ["It is sunny", " today.", " Take", " a", " hat."]


def pcm_of(seconds: float) -> bytes:
    """A tone, as a synthesis stage sends it: s16le at the dialogue's rate."""
    samples = np.sin(np.arange(int(seconds * RATE)) * 2 * np.pi * 440 / RATE) * 0.3
    return (samples * 32767).astype("<i2").tobytes()


class PlayedStages:
    """A `StageRunner` without Redis or workers: each stage plays back the events its job would write
    (`started`, its own events, `done`) and ends with a canned result."""

    wait_timeout_seconds = 60.0

    def __init__(self, audio: bytes, history: list[ChatMessage]) -> None:
        self.inputs = {"job_dialogue": audio}
        self.outputs: dict[str, bytes] = {}
        self.started: list[tuple[JobKind, dict[str, Any], bytes | None]] = []
        self.cancelled: list[str] = []
        self.remembered: list[ChatMessage] = []
        self.earlier = history
        self.pending: dict[str, list[tuple[str, Any]]] = {}
        self.results: dict[str, BaseModel] = {}

    def start(
        self, parent: JobRecord, name: str, kind: JobKind, request: dict[str, Any], audio: bytes | None = None
    ) -> Stage:
        assert parent.id in self.inputs, "a stage belongs to the dialogue that started it"
        stage = Stage(name=name, job_id=f"stage_{len(self.started)}", created=0.0)
        self.started.append((kind, request, audio))
        events: list[tuple[str, BaseModel]] = []
        result: BaseModel
        if kind == JobKind.transcribe:
            segment = TranscriptSegment(id=0, start=0.0, end=1.5, text=HEARD)
            result = TranscriptionResult(
                text=f" {HEARD} ",
                language="en",
                duration=1.5,
                task="transcribe",
                segments=[segment],
                model="whisper-tiny.en",
                timings=TranscriptionTimings(seconds=0.1),
            )
        elif kind == JobKind.chat:
            events = [(EventType.token, Token(text=delta)) for delta in ANSWER_DELTAS]
            result = GenerationResult(
                text="".join(ANSWER_DELTAS),
                model="gemma-3-270m",
                finish_reason="stop",
                usage=Usage.of(30, 8),
                timings=GenerationTimings(seconds=0.2, first_token_seconds=0.05, tokens_per_second=40.0),
            )
        else:
            speech = SynthesizeRequest.model_validate(request)
            chunk = AudioChunk.of(0, pcm_of(0.5), "pcm", RATE, 0.5, speech.text)
            events = [(EventType.audio_chunk, chunk)]
            result = SynthesisResult(
                response_format="pcm",
                media_type="audio/pcm",
                sample_rate=RATE,
                duration=0.5,
                bytes=16_000,
                chunks=1,
                model="hibari",
                voice=speech.voice,
                reference_id=None,
                characters=len(speech.text),
                timings=SynthesisTimings(seconds=0.1, first_chunk_seconds=0.05, real_time_factor=0.2),
            )
        done = Done(status=JobStatus.succeeded)
        played = [(EventType.started, {"attempt": 1}), *events, (EventType.done, done)]
        self.pending[stage.job_id] = [
            (str(t), d.model_dump(mode="json") if isinstance(d, BaseModel) else d) for t, d in played
        ]
        self.results[stage.job_id] = result
        return stage

    def read(self, stages: list[Stage], block_ms: int) -> list[tuple[Stage, str, Any]]:  # noqa: ARG002
        """The next event of each watched stage: the stages' events interleave as a worker's would."""
        found = [(stage, *self.pending[stage.job_id].pop(0)) for stage in stages if self.pending[stage.job_id]]
        assert found, "the dialogue waits on stages that have nothing more to play"
        return found

    def ended(self, stage: Stage, status: JobStatus, model: type[R]) -> R:
        assert status == JobStatus.succeeded and not self.pending[stage.job_id]
        return model.model_validate(self.results[stage.job_id].model_dump())

    def cancel(self, stage: Stage, owner: str) -> None:  # noqa: ARG002
        self.cancelled.append(stage.job_id)

    def overdue(self, stage: Stage) -> bool:  # noqa: ARG002
        return False

    def history(self, owner: str, conversation_id: str | None) -> list[ChatMessage]:  # noqa: ARG002
        return self.earlier if conversation_id else []

    def remember(self, owner: str, conversation_id: str | None, *turn: ChatMessage) -> None:  # noqa: ARG002
        self.remembered += turn

    def read_input(self, job_id: str) -> bytes | None:
        return self.inputs.get(job_id)

    def write_output(self, job_id: str, data: bytes) -> None:
        self.outputs[job_id] = data


def dialogue_job() -> JobRecord:
    speech = {"model": "hibari", "voice": "hibari", "response_format": "wav", "sample_rate": RATE}
    request = {"instructions": "Be brief.", "synthesis_config": speech, "conversation_id": "c1", "language": "en"}
    return JobRecord(
        id="job_dialogue", kind=JobKind.dialogue, status=JobStatus.running, owner="tester", request=request
    )


@pytest.mark.usefixtures("models")  # the registry the dialogue's model names are checked against
def test_a_dialogue_relays_its_stages_and_speaks_each_sentence_as_it_is_written() -> None:
    earlier = [ChatMessage(role="user", content="Hi."), ChatMessage(role="assistant", content="Hello!")]
    stages, run = PlayedStages(b"RIFF-audio", earlier), RecordingContext()
    result = run_dialogue_job(dialogue_job(), run, stages)

    kinds = [kind for kind, _, _ in stages.started]
    assert kinds == [JobKind.transcribe, JobKind.chat, JobKind.synthesize, JobKind.synthesize]
    assert stages.started[0][2] == b"RIFF-audio" and stages.started[0][1]["language"] == "en"
    chat = ChatRequest.model_validate(stages.started[1][1])
    assert [m.content for m in chat.messages] == ["Be brief.", "Hi.", "Hello!", HEARD]
    spoken_requests = [SynthesizeRequest.model_validate(request) for _, request, _ in stages.started[2:]]
    assert [s.text for s in spoken_requests] == ["It is sunny today.", "Take a hat."]
    assert {(s.response_format, s.voice, s.sample_rate) for s in spoken_requests} == {("pcm", "hibari", RATE)}

    types = [kind for kind, _ in run.events]
    assert types[:2] == [EventType.metadata, EventType.transcript]
    metadata = DialogueMetadata.model_validate(run.of(EventType.metadata)[0])
    assert (metadata.tts, metadata.voice, metadata.response_format, metadata.sample_rate) == (
        "hibari",
        "hibari",
        "wav",
        RATE,
    )
    assert HeardTranscript.model_validate(run.of(EventType.transcript)[0]).text == HEARD
    texts = run.of(EventType.assistant_text)
    assert [t["delta"] for t in texts[:-1]] == ANSWER_DELTAS and texts[-1] == {
        "text": result.response_text,
        "final": True,
    }
    # The first sentence is spoken while the model still writes the next.
    assert types.index(EventType.audio_chunk) < len(types) - 1 - types[::-1].index(EventType.assistant_text)
    chunks = [AudioChunk.model_validate(c) for c in run.of(EventType.audio_chunk)]
    assert [c.index for c in chunks] == list(range(result.chunks))
    assert [c.text for c in chunks] == ["It is sunny today.", "Take a hat."]  # a WAV has no encoder tail

    assert result.transcript == HEARD and result.response_text == "It is sunny today. Take a hat."
    assert result.models.model_dump() == {"stt": "whisper-tiny.en", "llm": "gemma-3-270m", "tts": "hibari"}
    assert result.usage == Usage.of(30, 8) and result.conversation_id == "c1" and result.duration == 1.0
    stored, rate = decode_audio(stages.outputs["job_dialogue"], "wav")
    assert rate == RATE and abs(stored.size / RATE - 1.0) < 0.05
    streamed, _ = decode_audio(b"".join(c.decoded() for c in chunks), "wav")  # its header has no length
    assert streamed.size == stored.size
    assert [m.content for m in stages.remembered] == [HEARD, result.response_text]
    assert stages.cancelled == []  # every stage ended: none is left to cancel


@pytest.mark.usefixtures("models")
def test_a_dialogue_that_is_cancelled_cancels_its_open_stages() -> None:
    stages, run = PlayedStages(b"RIFF-audio", []), RecordingContext(cancel_on=EventType.assistant_text)
    with pytest.raises(JobCancelled):
        run_dialogue_job(dialogue_job(), run, stages)
    assert stages.cancelled == ["stage_1"] and stages.outputs == {} and stages.remembered == []
