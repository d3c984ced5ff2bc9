"""The `data` of the events every job kind shares: `progress`, `error` and `done`. The kinds' own events
(`token`, `segment`, `audio_chunk`, the dialogue's) are beside their results."""

from __future__ import annotations

from pydantic import BaseModel, Field

from contract.jobs import JobStatus


class Progress(BaseModel):
    """`progress`: how far the job is, and in which stage (decoding, transcribing, synthesizing, …)."""

    fraction: float = Field(ge=0.0, le=1.0)
    stage: str


class ErrorData(BaseModel):
    """`error` (and a failed job's `error` field): a string code and a message for people."""

    type: str
    message: str


class Done(BaseModel):
    """`done`: the terminal event, with the status the job ended in."""

    status: JobStatus
