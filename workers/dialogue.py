"""The spoken dialogue: transcribe, answer, speak — each stage a job on the queue of its model.

The dialogue job runs on a `dialogue` worker, which loads no model: it queues a `transcribe` job, then a
`chat` job, follows the chat's `token` events, and queues a `synthesize` job for each sentence as soon
as the answer has finished it, so the first sentence is spoken while the model still writes the next.
Stage events are relayed into the dialogue's own log (one job id, one event log); the sentences' audio
(raw PCM from the stages) is encoded here into one stream of the format asked for, in sentence order.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from celery import Celery
from kombu.exceptions import OperationalError
from redis import Redis

from config import Settings
from contract.errors import EngineError, InvalidJobInput
from contract.jobs import EventType, JobKind, JobRecord, JobStatus
from contract.payloads import ChatMessage, ChatRequest, DialogueRequest, TranscribeRequest
from jobstore import keys
from jobstore.broker import is_redis_url
from jobstore.creation import CreatePlan, JobStoreError
from media.speech import MEDIA_TYPES, complete_sentences, speakable
from workers.audio_out import AudioEncoder
from workers.execution import JobExecution, WorkerStore

log = logging.getLogger(__name__)
HISTORY_MESSAGES = 40  # the last 20 turns of a conversation are kept


class StageFailed(EngineError):
    """A stage job failed; the dialogue fails with the stage's error type."""

    def __init__(self, stage: str, error: dict[str, Any]) -> None:
        super().__init__(f"{stage} failed: {error.get('message', 'no reason given')}")
        self.code = str(error.get("type", "stage_failed"))


@dataclass(slots=True)
class Stage:
    name: str  # transcription, generation, synthesis
    job_id: str
    created: float
    after: str = "0-0"  # the last event id read
    started: bool = False
    text: str | None = None  # synthesis: the sentence


@dataclass
class Stages:
    """Creates a dialogue's stage jobs and reads their events (sync; the worker runs jobs in threads)."""

    store: WorkerStore
    celery: Celery
    settings: Settings
    direct: bool = field(init=False)
    redis: Redis = field(init=False)  # the store's decoded client

    def __post_init__(self) -> None:
        self.direct = is_redis_url(str(self.celery.conf.broker_url))
        self.redis = self.store.redis

    def start(
        self, parent: JobRecord, name: str, kind: JobKind, request: dict[str, Any], audio: bytes | None = None
    ) -> Stage:
        s = self.settings
        plan = CreatePlan.build(
            self.celery,
            kind,
            request,
            owner=f"{parent.owner}:dialogue",  # stage jobs stay out of the owner's list and quota
            ttl=s.job_ttl_seconds,
            max_queue_depth=s.queue_max_depth,
            max_active=0,
            direct=self.direct,
            request_id=parent.request_id,
            input_file=audio,
            parent=parent.id,
        )
        if audio is not None:
            self.store.write_input(plan.job_id, audio)
        try:
            plan.outcome(self.store.scripts["create"](keys=plan.keys, args=plan.args))
        except JobStoreError as exc:
            raise EngineError(f"could not queue the {name} stage: {exc}") from exc
        if not self.direct:
            try:
                self.celery.send_task(
                    plan.task_name,
                    kwargs={"job_id": plan.job_id},
                    task_id=plan.job_id,
                    queue=plan.queue,
                    headers={"request_id": parent.request_id} if parent.request_id else {},
                )
            except OperationalError as exc:
                # The broker refused the message: end the stage's record too, or it would wait `queued`
                # for a message that never comes (as `JobStore.create` does for the API's jobs).
                error = {"type": "broker_unavailable", "message": f"the job broker refused the message: {exc}"}
                self.store.abandon(plan.job_id, error)
                raise EngineError(f"could not queue the {name} stage: the job broker is unreachable") from exc
        return Stage(name=name, job_id=plan.job_id, created=time.monotonic())

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

    def ended(self, stage: Stage, status: str) -> dict[str, Any]:
        """The result of a stage that has ended, or its failure raised."""
        record = self.record(stage)
        if status != JobStatus.succeeded or record.result is None:
            raise StageFailed(stage.name, record.error or {"type": "stage_" + status, "message": f"it ended {status}"})
        return record.result

    def cancel(self, stage: Stage, owner: str) -> None:
        try:
            self.store.scripts["cancel"](
                keys=[keys.job(stage.job_id), keys.events(stage.job_id)],
                args=[f"{owner}:dialogue", self.settings.job_ttl_seconds, keys.notify(stage.job_id)],
            )
        except Exception as exc:  # best effort: the stage job expires with its TTL anyway
            log.warning("could not cancel stage %s: %s", stage.job_id, exc)

    def overdue(self, stage: Stage) -> bool:
        """A stage no worker has taken within JOB_WAIT_TIMEOUT_SECONDS (no worker serves its queue)."""
        return not stage.started and time.monotonic() - stage.created > self.settings.job_wait_timeout_seconds

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

    def __init__(self, job: JobRecord, run: JobExecution, stages: Stages) -> None:
        self.job = job
        self.run = run
        self.stages = stages
        self.request = DialogueRequest.model_validate(job.request)
        synthesis = self.request.synthesis_config
        self.format = str(synthesis["response_format"])
        self.rate = int(synthesis["sample_rate"])
        self.encoder = AudioEncoder(self.format, self.rate)
        self.open: list[Stage] = []  # stage jobs not yet ended, cancelled if the dialogue stops
        self.started = time.perf_counter()
        self.first_audio: float | None = None
        self.chunks = 0
        self.checked = time.monotonic()

    def __call__(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            for stage in self.open:
                self.stages.cancel(stage, self.job.owner)

    def _run(self) -> dict[str, Any]:
        request, synthesis = self.request, self.request.synthesis_config
        self.run.emit(
            EventType.metadata,
            {
                "job_id": self.job.id,
                "conversation_id": request.conversation_id,
                "llm": request.generation_config.model,
                "tts": synthesis.get("model"),
                "voice": synthesis.get("voice"),
                "reference_id": synthesis.get("reference_id"),
                "response_format": self.format,
                "media_type": MEDIA_TYPES[self.format],
                "sample_rate": self.rate,
            },
        )
        transcription = self._transcribe()
        transcript = str(transcription["text"]).strip()
        if not transcript:
            raise InvalidJobInput("no speech was heard in the audio")
        segments = [
            {k: part.get(k) for k in ("id", "start", "end", "text")} for part in transcription.get("segments") or ()
        ]
        self.run.emit(
            EventType.transcript, {"text": transcript, "language": transcription.get("language"), "segments": segments}
        )
        answer = self._answer_and_speak(transcript)
        tail, whole = self.encoder.close()
        self._send(tail, None)
        self.stages.store.write_output(self.job.id, whole)
        user, assistant = (
            ChatMessage(role="user", content=transcript),
            ChatMessage(role="assistant", content=answer["text"]),
        )
        self.stages.remember(self.job.owner, request.conversation_id, user, assistant)
        seconds = time.perf_counter() - self.started
        return {
            "transcript": transcript,
            "language": transcription.get("language"),
            "segments": segments,
            "response_text": answer["text"],
            "response_format": self.format,
            "media_type": MEDIA_TYPES[self.format],
            "sample_rate": self.rate,
            "reference_id": synthesis.get("reference_id"),
            "voice": synthesis.get("voice"),
            "duration": round(self.encoder.seconds, 3),
            "chunks": self.chunks,
            "conversation_id": request.conversation_id,
            "models": {"stt": transcription.get("model"), "llm": answer.get("model"), "tts": synthesis.get("model")},
            "usage": answer.get("usage"),
            "timings": {
                "seconds": round(seconds, 4),
                "first_audio_seconds": round(self.first_audio, 4) if self.first_audio is not None else None,
            },
        }

    def _transcribe(self) -> dict[str, Any]:
        audio = self.stages.store.read_input(self.job.id)
        if audio is None:
            raise InvalidJobInput("the job's audio is no longer stored (it expired with JOB_TTL_SECONDS)")
        options = TranscribeRequest(language=self.request.language, filename=self.request.filename)
        stage = self._start("transcription", JobKind.transcribe, options.model_dump(mode="json"), audio)
        while True:
            for _, kind, data in self._read([stage]):
                if kind == EventType.done:
                    self.open.remove(stage)
                    return self.stages.ended(stage, data["status"])

    def _answer_and_speak(self, transcript: str) -> dict[str, Any]:
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
        answer: dict[str, Any] = {}
        while llm is not None or speaking:
            watched = [stage for stage in (llm, speaking[0] if speaking else None) if stage is not None]
            for stage, kind, data in self._read(watched):
                if stage is llm and kind == EventType.token:
                    self.run.emit(EventType.assistant_text, {"delta": data["text"]})
                    finished, pending = complete_sentences(pending + data["text"])
                    speaking.extend(self._speak(sentence) for sentence in finished if speakable(sentence))
                elif stage is llm and kind == EventType.done:
                    self.open.remove(stage)
                    answer = self.stages.ended(stage, data["status"])
                    self.run.emit(EventType.assistant_text, {"text": answer["text"], "final": True})
                    if speakable(pending):
                        speaking.append(self._speak(pending.strip()))
                    llm = None
                elif kind == EventType.audio_chunk:
                    pcm = np.frombuffer(base64.b64decode(data["audio"]), dtype="<i2").astype(np.float32) / 32768
                    self._send(self.encoder.encode(pcm, self.rate), stage.text)
                elif kind == EventType.done:
                    self.open.remove(stage)
                    self.stages.ended(stage, data["status"])
                    speaking.popleft()
        if not str(answer.get("text", "")).strip():
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
                    f"JOB_WAIT_TIMEOUT_SECONDS={self.stages.settings.job_wait_timeout_seconds:g}; "
                    "is a worker serving its queue?"
                )
        return events

    def _send(self, data: bytes, text: str | None) -> None:
        if not data:
            return
        if self.first_audio is None:
            self.first_audio = time.perf_counter() - self.started
        event = {"index": self.chunks, "audio": base64.b64encode(data).decode(), "format": self.format}
        event.update({"sample_rate": self.rate, "end": round(self.encoder.seconds, 3), "text": text})
        self.run.emit(EventType.audio_chunk, event)
        self.chunks += 1


def run_dialogue_job(job: JobRecord, run: JobExecution, stages: Stages) -> dict[str, Any]:
    return Dialogue(job, run, stages)()
