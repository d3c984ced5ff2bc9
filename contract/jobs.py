"""The job model: kinds, states, event types, and the record as stored in its Redis hash."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal


class JobKind(StrEnum):
    generate = "generate"  # a prompt in, text out (the Gemma 3 turn template is applied when needed)
    chat = "chat"  # a list of messages in, the assistant's reply out
    completion = "completion"  # raw text completion, no template (OpenAI /v1/completions)
    transcribe = "transcribe"  # audio in, transcript out (or an English translation with task=translate)
    synthesize = "synthesize"  # text in, audio out (streamed sentence by sentence as `audio_chunk` events)
    dialogue = "dialogue"  # speech in: transcribe, answer, speak; its stages are jobs on the stt/llm/tts queues


class ServiceTier(StrEnum):
    """OpenAI's `service_tier` values: how soon a waiting job starts (`tasks/scheduler.py` has the policy)."""

    priority = "priority"  # conversations: a dialogue's stages, realtime turns
    default = "default"  # direct API requests
    flex = "flex"  # bulk: Batch API lines, `speechq transcribe`


# What a request may ask for: a tier, or `auto` (the API key's default).
RequestedTier = Literal["auto", "priority", "default", "flex"]


class JobStatus(StrEnum):
    queued = "queued"  # accepted and waiting for a worker
    running = "running"  # a worker holds its lease and is working on it
    cancelling = "cancelling"  # cancel requested while running; the worker stops at its next step
    succeeded = "succeeded"  # finished with a result
    failed = "failed"  # finished with an error{type, message}
    cancelled = "cancelled"  # stopped on request, before or while running
    expired = "expired"  # waited in the queue past its deadline and was never run

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.expired})


class EventType(StrEnum):
    queued = "queued"
    started = "started"
    progress = "progress"  # {fraction, stage}
    token = "token"  # {text}: an LLM text delta
    segment = "segment"
    metadata = "metadata"  # dialogue: what the job will use (models, format, conversation)
    transcript = "transcript"
    assistant_text = "assistant_text"  # dialogue: {delta} as the answer is written, then {text, final}
    audio_chunk = "audio_chunk"
    result = "result"
    error = "error"  # {type, message}
    done = "done"  # terminal: {status}


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as read back from its hash."""

    id: str
    kind: JobKind
    status: JobStatus
    owner: str
    request: dict[str, Any]
    times: dict[str, float] = field(default_factory=dict)
    attempts: int = 0
    worker: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    request_id: str | None = None
    service_tier: ServiceTier = ServiceTier.default
    webhook_url: str | None = None  # told when the job ends, of the ends in `webhook_events`
    webhook_events: tuple[str, ...] = ()
    webhook_event: str | None = None  # the id of the event its end queued

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> JobRecord:
        times = {name: float(value) for name, value in raw.items() if name.endswith("_at") and value}
        return cls(
            id=raw["id"],
            kind=JobKind(raw["kind"]),
            status=JobStatus(raw["status"]),
            owner=raw["owner"],
            request=json.loads(raw.get("request") or "{}"),
            times=times,
            attempts=int(raw.get("attempts") or 0),
            worker=raw.get("worker") or None,
            result=_json_or_none(raw.get("result")),
            error=_json_or_none(raw.get("error")),
            progress=_json_or_none(raw.get("progress")),
            request_id=raw.get("request_id") or None,
            service_tier=ServiceTier(raw.get("tier") or ServiceTier.default),
            webhook_url=raw.get("webhook_url") or None,
            webhook_events=tuple((raw.get("webhook_events") or "").split()),
            webhook_event=raw.get("webhook_event") or None,
        )


def _json_or_none(value: str | None) -> Any:
    return json.loads(value) if value else None
