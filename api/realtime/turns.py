"""A realtime session's turns: the user's audio heard (a `transcribe` job in the background) and a response
under way (its jobs, so a cancel can stop them)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from api.auth import Principal
from api.intake.jobs import abandon, follow, submit
from api.realtime.audio import wav
from api.realtime.protocol import ProtocolError, SessionConfig
from api.state import AppState
from contract.generation import ChatMessage
from contract.jobs import EventType, JobKind, JobRecord, JobStatus
from contract.transcription import TranscribeRequest, TranscriptionResult


class Conversation(Protocol):
    """What a turn and an answer use of their session (api/realtime/session.py `Session`)."""

    config: SessionConfig
    state: AppState
    principal: Principal
    items: list[dict[str, Any]]
    spoken: dict[str, Any]  # item id → the answer's `AssistantAudio`
    turns: dict[str, Turn]

    def emit(self, event: dict[str, Any]) -> None: ...
    def context(self, instructions: str, input_items: list[dict[str, Any]] | None) -> list[ChatMessage]: ...
    def _add_item(self, item: dict[str, Any], previous: str | None, *, done: bool = True) -> None: ...
    def _conversation_id(self) -> str: ...
    async def _save(self) -> None: ...
    def _spawn(self, work: Awaitable[None]) -> None: ...


@dataclass
class Turn:
    """A user's audio turn: its item and its transcription (a task, awaited by the response)."""

    item_id: str
    transcript: asyncio.Task[str]


class Heard:
    """The words of some audio: a `transcribe` job, run in the background. Its segments queue in `deltas`
    (None last) for whoever announces them, which is after the commit even when the job started before it
    (a transcription started speculatively when the speech paused)."""

    def __init__(self, session: Conversation, audio: np.ndarray) -> None:
        self.session = session
        self.audio = audio
        self.deltas: asyncio.Queue[str | None] = asyncio.Queue()
        self.job: JobRecord | None = None
        self.text: asyncio.Task[str] = asyncio.create_task(self._run(), name="speechq-realtime-stt")
        self.text.add_done_callback(retrieved)

    @property
    def seconds(self) -> float:
        return self.audio.size / self.session.config.input_format.rate

    async def _run(self) -> str:
        s = self.session
        settings = s.config.transcription
        request = TranscribeRequest(
            model=settings.model if settings else None,
            language=settings.language if settings else None,
            prompt=settings.prompt if settings else None,
            filename="turn.wav",
            service_tier="priority",
        )
        try:
            self.job, _ = await submit(
                s.state,
                JobKind.transcribe,
                request,
                s.principal,
                input_file=wav(self.audio, s.config.input_format.rate),
            )
            async for event in follow(s.state, self.job.id):
                if event.type == EventType.segment and event.data.get("text"):
                    self.deltas.put_nowait(str(event.data["text"]))
            final = await s.state.store.get(self.job.id, owner=self.job.owner)
            if final is None or final.status != JobStatus.succeeded or final.result is None:
                status = final.status if final is not None else "expired"
                error = (final.error or {}).get("message", "") if final is not None else ""
                raise ProtocolError(
                    f"the transcription ended {status}: {error}".rstrip(": "), code="transcription_failed"
                )
            return TranscriptionResult.model_validate(final.result).text.strip()
        finally:
            self.deltas.put_nowait(None)

    def drop(self) -> None:
        """Not wanted after all (the speech went on): stop the job."""
        self.text.cancel()
        if self.job is not None:
            self.session._spawn(abandon(self.session.state, self.job))


class Response:
    """One response: its jobs, so a cancel can stop them, and why it ended."""

    def __init__(self, response_id: str, options: dict[str, Any]) -> None:
        self.id = response_id
        self.options = options
        self.jobs: list[JobRecord] = []
        self.cancel_reason: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.speech_end: float | None = None  # monotonic time the user's speech ended (metrics)


def retrieved(task: asyncio.Task[Any]) -> None:
    """Mark a background task's failure as seen (it was reported as an event), so asyncio does not log it."""
    if not task.cancelled():
        task.exception()
