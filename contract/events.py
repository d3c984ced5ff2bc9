"""The `data` of the events every job kind shares: `progress`, `error` and `done`. The kinds' own events
(`token`, `segment`, `audio_chunk`, the dialogue's) are beside their results; `event_data` reads any
event's data as its model."""

from __future__ import annotations

from typing import Any, Literal, overload

from pydantic import BaseModel, Field, TypeAdapter

from contract.dialogue import AssistantDelta, AssistantFinal, DialogueMetadata, HeardTranscript
from contract.errors import JobError, failure_from
from contract.generation import Token
from contract.jobs import EventType, JobStatus
from contract.synthesis import AudioChunk
from contract.transcription import Segment


class Progress(BaseModel):
    """`progress`: how far the job is, and in which stage (decoding, transcribing, synthesizing, …)."""

    fraction: float = Field(ge=0.0, le=1.0)
    stage: str


class ErrorData(BaseModel):
    """`error` (and a failed job's `error` field): a string code and a message for people."""

    type: str
    message: str

    def failure(self) -> JobError:
        """The failure as its class in the error tree (so its code and HTTP status)."""
        return failure_from(self.model_dump())


class Done(BaseModel):
    """`done`: the terminal event, with the status the job ended in."""

    status: JobStatus


AssistantText = AssistantFinal | AssistantDelta
_ASSISTANT_TEXT: TypeAdapter[AssistantText] = TypeAdapter(AssistantText)

# The events whose data has one model whatever the job's kind (`result` is its kind's, `contract.results`;
# `queued` and `started` are written by the store's scripts and read by no one but clients).
EVENT_MODELS: dict[str, type[BaseModel]] = {
    EventType.progress: Progress,
    EventType.token: Token,
    EventType.segment: Segment,
    EventType.metadata: DialogueMetadata,
    EventType.transcript: HeardTranscript,
    EventType.audio_chunk: AudioChunk,
    EventType.error: ErrorData,
    EventType.done: Done,
}


@overload
def event_data(event_type: Literal[EventType.done], data: Any) -> Done: ...
@overload
def event_data(event_type: Literal[EventType.error], data: Any) -> ErrorData: ...
@overload
def event_data(event_type: Literal[EventType.audio_chunk], data: Any) -> AudioChunk: ...
@overload
def event_data(event_type: Literal[EventType.token], data: Any) -> Token: ...
@overload
def event_data(event_type: Literal[EventType.metadata], data: Any) -> DialogueMetadata: ...
@overload
def event_data(event_type: Literal[EventType.transcript], data: Any) -> HeardTranscript: ...
@overload
def event_data(event_type: Literal[EventType.assistant_text], data: Any) -> AssistantText: ...
@overload
def event_data(event_type: str, data: Any) -> BaseModel: ...
def event_data(event_type: str, data: Any) -> BaseModel:
    """An event's `data`, as stored, read as the model of its type; a type with no model here (`result`,
    `queued`, `started`) is a `KeyError`."""
    if event_type == EventType.assistant_text:
        return _ASSISTANT_TEXT.validate_python(data)
    return EVENT_MODELS[event_type].model_validate(data)
