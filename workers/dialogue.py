"""The spoken dialogue: transcribe, answer, speak — each stage a job on the queue of its model.

The dialogue job runs on a `dialogue` worker, which loads no model: it queues a `transcribe` job, then a
`chat` job, follows the chat's `token` events, and queues a `synthesize` job for each sentence as soon
as the answer has finished it, so the first sentence is spoken while the model still writes the next.
Stage events are relayed into the dialogue's own log (one job id, one event log); the sentences' audio
(raw PCM from the stages) is encoded here into one stream of the format asked for, in sentence order.

What the model says is never the client's fault: a sentence the voice cannot say (emoji, punctuation, a
script it does not read) is left unspoken, and an answer with nothing speakable in it (an empty one too)
still succeeds, with its text and `SILENCE_SECONDS` of silence as its audio.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import numpy as np

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
from contract.errors import EngineError, InvalidJobInput
from contract.events import event_data
from contract.generation import ChatMessage, ChatRequest, GenerationResult
from contract.jobs import EventType, JobKind, JobRecord, JobStatus
from contract.speech import MEDIA_TYPES, complete_sentences, speakable
from contract.synthesis import SynthesisResult
from contract.transcription import TranscribeRequest, TranscriptionResult
from workers.audio_out import AudioEncoder, ChunkSender
from workers.context import JobContext
from workers.stages import Stage, StageRunner

log = logging.getLogger(__name__)
# The audio of an answer with nothing to speak: every format's encoder emits at least one whole frame of
# it, so the stream and the stored file stay a valid, playable file of the format asked for (an encoder
# given no samples at all writes no bytes for mp3, opus or aac).
SILENCE_SECONDS = 0.2


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
        if self.encoder.samples == 0:  # nothing in the answer could be spoken
            silence = np.zeros(round(SILENCE_SECONDS * self.rate), np.float32)
            self.chunks.send(self.encoder.encode(silence, self.rate), None)
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
                    self._spoken(stage, event_data(EventType.done, data).status)
                    speaking.popleft()
        assert answer is not None, "the loop ends once the generation stage has ended"
        return answer

    def _spoken(self, stage: Stage, status: JobStatus) -> None:
        """A synthesis stage's end. One refused as `invalid_input` could say nothing of its sentence (the
        API checked the voice; the text is the model's): that sentence is silent, and the dialogue goes on."""
        try:
            self.stages.ended(stage, status, SynthesisResult)
        except InvalidJobInput as exc:
            log.info("dialogue %s: a sentence of the answer is not spoken: %s", self.job.id, exc.message)

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
