"""The spoken dialogue: transcribe, answer, speak — each stage a job on the queue of its model.

The dialogue job runs on a `dialogue` worker, which loads no model: it queues a `transcribe` job, then a
`chat` job, follows the chat's `token` events, and queues a `synthesize` job for each sentence as soon
as the answer has finished it, so the first sentence is spoken while the model still writes the next.
Stage events are relayed into the dialogue's own log (one job id, one event log); the sentences' audio
(raw PCM from the stages) is encoded here into one stream of the format asked for, in sentence order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import numpy as np
from celery import Celery
from kombu.exceptions import OperationalError
from pydantic import BaseModel
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from config import Settings
from contract.dialogue import (
    AssistantDelta,
    AssistantFinal,
    DialogueMetadata,
    DialogueModels,
    DialogueRequest,
    DialogueResult,
    DialogueTimings,
    HeardTranscript,
)
from contract.errors import (
    EngineError,
    InvalidJobInput,
    JobError,
    StageCancelled,
    StageExpired,
    failure_from,
)
from contract.events import event_data
from contract.generation import ChatMessage, ChatRequest, GenerationResult
from contract.jobs import EventType, JobKind, JobRecord, JobStatus
from contract.results import result_of
from contract.synthesis import SynthesisResult
from contract.transcription import TranscribeRequest, TranscriptionResult
from jobstore import keys
from jobstore.creation import JobStoreError
from jobstore.store import JobStore
from media.speech import MEDIA_TYPES, complete_sentences, speakable
from workers.audio_out import AudioEncoder, ChunkSender
from workers.context import JobContext
from workers.execution import WorkerStore

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)
STORE_TIMEOUT_SECONDS = 10.0  # one Redis reply while creating or cancelling a stage
HISTORY_MESSAGES = 40  # the last 20 turns of a conversation are kept


def stage_failure(stage: str, status: str, error: dict[str, Any] | None) -> JobError:
    """A stage job's failure as the dialogue's: the stage's own class in the tree (so its code), with a
    message that names the stage."""
    if error:
        failed = failure_from(error)
        return type(failed)(f"{stage} failed: {failed.message}")
    if status == JobStatus.cancelled:
        return StageCancelled(f"{stage} failed: it was cancelled")
    if status == JobStatus.expired:
        return StageExpired(f"{stage} failed: it expired in its queue")
    return JobError(f"{stage} failed: it ended {status}")


@dataclass(slots=True)
class Stage:
    name: str  # transcription, generation, synthesis
    job_id: str
    created: float
    after: str = "0-0"  # the last event id read
    started: bool = False
    text: str | None = None  # synthesis: the sentence


class StageRunner(Protocol):
    """All a dialogue sees of its stages and its store: `Stages` runs each stage as a job on its model's
    queue; a test plays recorded stage events back."""

    @property
    def wait_timeout_seconds(self) -> float:
        """How long a stage may wait for a worker to take it (JOB_WAIT_TIMEOUT_SECONDS)."""

    def start(
        self, parent: JobRecord, name: str, kind: JobKind, request: dict[str, Any], audio: bytes | None = None
    ) -> Stage:
        """Queue a stage job (its `request` as JSON-ready data, `audio` its input file)."""

    def read(self, stages: list[Stage], block_ms: int) -> list[tuple[Stage, str, Any]]:
        """New events of the given stages, in order per stage: (stage, type, data as stored)."""

    def ended(self, stage: Stage, status: JobStatus, model: type[R]) -> R:
        """The result of a stage that has ended, as `model`, or its failure raised."""

    def cancel(self, stage: Stage, owner: str) -> None: ...

    def overdue(self, stage: Stage) -> bool:
        """A stage no worker has taken within `wait_timeout_seconds`."""

    def history(self, owner: str, conversation_id: str | None) -> list[ChatMessage]: ...

    def remember(self, owner: str, conversation_id: str | None, *turn: ChatMessage) -> None: ...

    def read_input(self, job_id: str) -> bytes | None:
        """The dialogue job's audio, or None once it has expired."""

    def write_output(self, job_id: str, data: bytes) -> None:
        """The dialogue job's encoded audio, kept for `GET /v1/jobs/{id}/audio`."""


class Stages:
    """Creates a dialogue's stage jobs and reads their events (sync; the worker runs jobs in threads).

    Stage jobs are created by the job store the API uses (`JobStore.create`, async), run on a loop of
    their own, so a stage is refused, enqueued, or abandoned when the broker refuses it, as any job is.
    """

    def __init__(self, store: WorkerStore, celery: Celery, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.redis: Redis = store.redis  # the store's decoded client
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="speechq-stage-store", daemon=True)
        self._thread.start()
        url = settings.redis_url
        assert url is not None, "a worker starts only with REDIS_URL set"
        # Bounded waits: a stalled Redis fails the dialogue instead of holding its thread for ever.
        wait = STORE_TIMEOUT_SECONDS
        self._jobs = JobStore(
            AsyncRedis.from_url(url, decode_responses=True, socket_timeout=wait, socket_connect_timeout=wait),
            AsyncRedis.from_url(url, socket_timeout=wait, socket_connect_timeout=wait),
            celery,
            ttl=settings.job_ttl_seconds,
            max_queue_depth=settings.queue_max_depth,
        )

    def close(self) -> None:
        """Close the store's connections and stop its loop (a worker process just exits)."""
        self._call(self._jobs.redis.aclose())
        self._call(self._jobs.raw.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        # Past the sockets' own timeouts, so the store's error (not a bare TimeoutError) is what is raised.
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=3 * STORE_TIMEOUT_SECONDS)

    def start(
        self, parent: JobRecord, name: str, kind: JobKind, request: dict[str, Any], audio: bytes | None = None
    ) -> Stage:
        creating = self._jobs.create(
            kind,
            request,
            owner=keys.stage_owner(parent.owner),  # stage jobs stay out of the owner's list and quota
            request_id=parent.request_id,
            input_file=audio,
            max_active=0,
            parent=parent.id,
        )
        try:
            job = self._call(creating).job
        except JobStoreError as exc:
            raise EngineError(f"could not queue the {name} stage: {exc}") from exc
        except OperationalError as exc:  # the store has ended the stage's record `failed`
            raise EngineError(f"could not queue the {name} stage: the job broker is unreachable") from exc
        return Stage(name=name, job_id=job.id, created=time.monotonic())

    def read(self, stages: list[Stage], block_ms: int) -> list[tuple[Stage, str, Any]]:
        """New events of the given stages, in order per stage: (stage, type, data)."""
        by_key = {keys.events(stage.job_id): stage for stage in stages}
        reply = self.redis.xread({key: stage.after for key, stage in by_key.items()}, block=block_ms)
        found: list[tuple[Stage, str, Any]] = []
        for key, entries in cast(list[tuple[str, list[tuple[str, dict[str, str]]]]], reply or []):
            stage = by_key[key]
            for event_id, fields in entries:
                stage.after = event_id
                stage.started = stage.started or fields["type"] == EventType.started
                found.append((stage, fields["type"], json.loads(fields["data"])))
        return found

    def record(self, stage: Stage) -> JobRecord:
        raw = cast(dict[str, str], self.redis.hgetall(keys.job(stage.job_id)))
        if not raw:
            raise EngineError(f"the {stage.name} stage job {stage.job_id} has vanished")
        return JobRecord.from_hash(raw)

    def ended(self, stage: Stage, status: JobStatus, model: type[R]) -> R:
        """The result of a stage that has ended, as `model`, or its failure raised."""
        record = self.record(stage)
        if status != JobStatus.succeeded or record.result is None:
            raise stage_failure(stage.name, status, record.error)
        return result_of(record, model)

    def cancel(self, stage: Stage, owner: str) -> None:
        try:
            self._call(self._jobs.cancel(stage.job_id, owner=keys.stage_owner(owner)))
        except Exception as exc:  # noqa: BLE001 - best effort: the stage job expires with its TTL anyway
            log.warning("could not cancel stage %s: %s", stage.job_id, exc)

    @property
    def wait_timeout_seconds(self) -> float:
        return self.settings.job_wait_timeout_seconds

    def overdue(self, stage: Stage) -> bool:
        """A stage no worker has taken within JOB_WAIT_TIMEOUT_SECONDS (no worker serves its queue)."""
        return not stage.started and time.monotonic() - stage.created > self.wait_timeout_seconds

    def read_input(self, job_id: str) -> bytes | None:
        return self.store.read_input(job_id)

    def write_output(self, job_id: str, data: bytes) -> None:
        self.store.write_output(job_id, data)

    def history(self, owner: str, conversation_id: str | None) -> list[ChatMessage]:
        if conversation_id is None:
            return []
        items = cast(list[str], self.redis.lrange(keys.conversation(owner, conversation_id), 0, -1))
        return [ChatMessage.model_validate_json(item) for item in items]

    def remember(self, owner: str, conversation_id: str | None, *turn: ChatMessage) -> None:
        if conversation_id is None:
            return
        key = keys.conversation(owner, conversation_id)
        with self.redis.pipeline() as pipe:
            pipe.rpush(key, *[message.model_dump_json() for message in turn])
            pipe.ltrim(key, -HISTORY_MESSAGES, -1)
            pipe.expire(key, self.settings.job_ttl_seconds)
            pipe.execute()


class Dialogue:
    """One run of a dialogue job."""

    def __init__(self, job: JobRecord, run: JobContext, stages: StageRunner) -> None:
        self.job = job
        self.run = run
        self.stages = stages
        self.request = DialogueRequest.model_validate(job.request)
        speech = self.request.synthesis_config
        if speech.sample_rate is None:
            raise InvalidJobInput("the dialogue's synthesis_config has no sample_rate (the API resolves one)")
        self.metadata = DialogueMetadata(
            job_id=job.id,
            conversation_id=self.request.conversation_id,
            llm=self.request.generation_config.model,
            tts=speech.model,
            voice=speech.voice,
            reference_id=speech.reference_id,
            response_format=speech.response_format,
            media_type=MEDIA_TYPES[speech.response_format],
            sample_rate=speech.sample_rate,
        )
        self.rate = self.metadata.sample_rate
        self.encoder = AudioEncoder(self.metadata.response_format, self.rate)
        self.open: list[Stage] = []  # stage jobs not yet ended, cancelled if the dialogue stops
        self.started = time.perf_counter()
        self.chunks = ChunkSender(run, self.encoder, self.started)
        self.checked = time.monotonic()

    def __call__(self) -> DialogueResult:
        try:
            return self._run()
        finally:
            for stage in self.open:
                self.stages.cancel(stage, self.job.owner)

    def _run(self) -> DialogueResult:
        request, metadata = self.request, self.metadata
        self.run.emit(EventType.metadata, metadata)
        transcription = self._transcribe()
        transcript = transcription.text.strip()
        if not transcript:
            raise InvalidJobInput("no speech was heard in the audio")
        heard = HeardTranscript(
            text=transcript, language=transcription.language, segments=[s.brief() for s in transcription.segments]
        )
        self.run.emit(EventType.transcript, heard)
        answer = self._answer_and_speak(transcript)
        tail, whole = self.encoder.close()
        self.chunks.send(tail, None)
        self.stages.write_output(self.job.id, whole)
        user, assistant = (
            ChatMessage(role="user", content=transcript),
            ChatMessage(role="assistant", content=answer.text),
        )
        self.stages.remember(self.job.owner, request.conversation_id, user, assistant)
        seconds = time.perf_counter() - self.started
        first_audio = self.chunks.first
        return DialogueResult(
            transcript=transcript,
            language=heard.language,
            segments=heard.segments,
            response_text=answer.text,
            response_format=metadata.response_format,
            media_type=metadata.media_type,
            sample_rate=self.rate,
            reference_id=metadata.reference_id,
            voice=metadata.voice,
            duration=round(self.encoder.seconds, 3),
            chunks=self.chunks.count,
            conversation_id=request.conversation_id,
            models=DialogueModels(stt=transcription.model, llm=answer.model, tts=metadata.tts),
            usage=answer.usage,
            timings=DialogueTimings(
                seconds=round(seconds, 4),
                first_audio_seconds=round(first_audio, 4) if first_audio is not None else None,
            ),
        )

    def _transcribe(self) -> TranscriptionResult:
        audio = self.stages.read_input(self.job.id)
        if audio is None:
            raise InvalidJobInput("the job's audio is no longer stored (it expired with JOB_TTL_SECONDS)")
        options = TranscribeRequest(language=self.request.language, filename=self.request.filename)
        stage = self._start("transcription", JobKind.transcribe, options.model_dump(mode="json"), audio)
        while True:
            for _, kind, data in self._read([stage]):
                if kind == EventType.done:
                    self.open.remove(stage)
                    return self.stages.ended(stage, event_data(EventType.done, data).status, TranscriptionResult)

    def _answer_and_speak(self, transcript: str) -> GenerationResult:
        request = self.request
        messages = []
        if request.instructions:
            messages.append(ChatMessage(role="system", content=request.instructions))
        messages += self.stages.history(self.job.owner, request.conversation_id)
        messages.append(ChatMessage(role="user", content=transcript))
        chat = ChatRequest(messages=messages, **request.generation_config.model_dump())
        llm: Stage | None = self._start("generation", JobKind.chat, chat.model_dump(mode="json"))
        speaking: deque[Stage] = deque()
        pending = ""
        answer: GenerationResult | None = None
        while llm is not None or speaking:
            watched = [stage for stage in (llm, speaking[0] if speaking else None) if stage is not None]
            for stage, kind, data in self._read(watched):
                if stage is llm and kind == EventType.token:
                    delta = event_data(EventType.token, data).text
                    self.run.emit(EventType.assistant_text, AssistantDelta(delta=delta))
                    finished, pending = complete_sentences(pending + delta)
                    speaking.extend(self._speak(sentence) for sentence in finished if speakable(sentence))
                elif stage is llm and kind == EventType.done:
                    self.open.remove(stage)
                    answer = self.stages.ended(stage, event_data(EventType.done, data).status, GenerationResult)
                    self.run.emit(EventType.assistant_text, AssistantFinal(text=answer.text))
                    if speakable(pending):
                        speaking.append(self._speak(pending.strip()))
                    llm = None
                elif kind == EventType.audio_chunk:
                    raw = event_data(EventType.audio_chunk, data).decoded()  # the stage's PCM, s16le
                    pcm = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768
                    self.chunks.send(self.encoder.encode(pcm, self.rate), stage.text)
                elif kind == EventType.done:
                    self.open.remove(stage)
                    self.stages.ended(stage, event_data(EventType.done, data).status, SynthesisResult)
                    speaking.popleft()
        if answer is None or not answer.text.strip():
            raise EngineError("the model's answer was empty; there is nothing to speak")
        return answer

    def _speak(self, sentence: str) -> Stage:
        stage = self._start("synthesis", JobKind.synthesize, self.request.speech(sentence).model_dump(mode="json"))
        stage.text = sentence
        return stage

    def _start(self, name: str, kind: JobKind, request: dict[str, Any], audio: bytes | None = None) -> Stage:
        stage = self.stages.start(self.job, name, kind, request, audio)
        self.open.append(stage)
        return stage

    def _read(self, watched: list[Stage]) -> list[tuple[Stage, str, Any]]:
        """Wait up to a second for stage events; between waits, honour a cancel and spot a stuck stage."""
        events = self.stages.read(watched, block_ms=1000)
        if time.monotonic() - self.checked >= 1.0:  # every emit checks too; this covers the quiet waits
            self.run.check()
            self.checked = time.monotonic()
        for stage in watched:
            if self.stages.overdue(stage):
                raise EngineError(
                    f"the {stage.name} stage was not taken by any worker within "
                    f"JOB_WAIT_TIMEOUT_SECONDS={self.stages.wait_timeout_seconds:g}; "
                    "is a worker serving its queue?"
                )
        return events


def run_dialogue_job(job: JobRecord, run: JobContext, stages: StageRunner) -> DialogueResult:
    return Dialogue(job, run, stages)()
