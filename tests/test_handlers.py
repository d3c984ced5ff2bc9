"""The job handlers on their own: no Celery, no Redis. Each runs a real tiny model from `ModelCache` and
reports to a `JobContext` that records its events in a list, and stops the job when told to."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from config import Settings
from contract.catalog import Registry, registry, use_registry
from contract.errors import ContextOverflow, InvalidAudio, InvalidJobInput
from contract.jobs import EventType, JobKind, JobRecord, JobStatus
from tests.audio import SENTENCES, decode_audio, spoken, wer
from workers.execution import JobCancelled
from workers.handlers import run_llm_job, run_stt_job, run_tts_job
from workers.models import ModelCache

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

    def emit(self, event: EventType | str, data: Any) -> None:
        self.events.append((str(event), data.model_dump(mode="json") if isinstance(data, BaseModel) else data))
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
