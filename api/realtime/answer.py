"""One response of a realtime session: the words from a `chat` job, the voice from a `synthesize` job per
sentence, sent as OpenAI's response events (held back while the answer is speculative)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from api.errors import ApiError, as_api_error
from api.intake.jobs import abandon, follow, submit
from api.intake.synthesis import resolved
from api.realtime import protocol
from api.realtime.audio import Encoder
from api.realtime.items import client_items
from api.realtime.protocol import ProtocolError, new_id
from api.realtime.turns import Conversation, Heard, Response
from contract.events import event_data
from contract.generation import ChatMessage, ChatRequest, GenerationResult
from contract.jobs import EventType, JobKind, JobRecord, JobStatus
from contract.speech import complete_sentences, speakable
from contract.synthesis import SynthesizeRequest


@dataclass
class AssistantAudio:
    """What an assistant item said, sentence by sentence, with where each ends in its audio (for truncate)."""

    marks: list[tuple[int, str]] = field(default_factory=list)  # (end ms, sentence)

    @property
    def ms(self) -> int:
        return self.marks[-1][0] if self.marks else 0

    def heard(self, audio_end_ms: int) -> str:
        """The text spoken in the first `audio_end_ms`: whole sentences, then the share of the next."""
        said: list[str] = []
        start = 0
        for end, sentence in self.marks:
            if end <= audio_end_ms:
                said.append(sentence)
            else:
                words = sentence.split()
                share = (audio_end_ms - start) / max(end - start, 1)
                part = " ".join(words[: int(len(words) * share)])
                if part:
                    said.append(part)
                break
            start = end
        return " ".join(said)


class Answer:
    """The work of one response: the words from a `chat` job, the voice from `synthesize` jobs."""

    def __init__(self, session: Conversation, response: Response) -> None:
        self.session = session
        self.response = response
        self.options = response.options
        config = session.config
        modalities = self.options.get("output_modalities", self.options.get("modalities"))
        self.modalities = (
            protocol.modalities(modalities, "response.output_modalities") if modalities else config.output_modalities
        )
        self.audio = "audio" in self.modalities
        voice = self.options.get("voice") or (self.options.get("audio") or {}).get("output", {}).get("voice")
        self.voice = voice if isinstance(voice, str) else config.voice
        instructions = self.options.get("instructions")
        self.instructions = instructions if isinstance(instructions, str) else config.instructions
        limit = self.options.get("max_output_tokens", self.options.get("max_response_output_tokens"))
        self.max_tokens = (
            protocol.token_limit(limit, "response.max_output_tokens") if limit is not None else config.max_output_tokens
        )
        self.in_conversation = self.options.get("conversation", "auto") != "none"
        self.item_id = new_id("item")
        self.text = ""
        self.usage: dict[str, Any] | None = None
        self.spoken = AssistantAudio()
        self.audio_ms = 0.0
        self.item: dict[str, Any] | None = None
        self.encoder = Encoder(config.output_format)
        self.first_audio: float | None = None
        # A speculative answer (started when the user's speech paused, on the words heard so far) shows
        # nothing until the turn's end is confirmed: what it would have shown waits here, in order.
        self.heard: Heard | None = None
        self.confirmed = True
        self._held: list[Callable[[], None]] = []

    def visible(self, action: Callable[[], None]) -> None:
        if self.confirmed:
            action()
        else:
            self._held.append(action)

    def confirm(self) -> None:
        """The turn ended as it was when this answer started: show what it has done, and the rest as it comes."""
        self.confirmed = True
        held, self._held = self._held, []
        for action in held:
            action()

    def show(self, event: dict[str, Any]) -> None:
        self.visible(functools.partial(self.session.emit, copy.deepcopy(event)))

    def _response(self, status: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
        config = self.session.config
        limit: int | str = self.max_tokens if self.max_tokens is not None else "inf"
        return {
            "id": self.response.id,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "output": [self.item] if self.item is not None else [],
            "conversation_id": self.session._conversation_id() if self.in_conversation else None,
            "output_modalities": self.modalities,
            "max_output_tokens": limit,
            "audio": {"output": {"format": config.output_format.ga(), "voice": self.voice}},
            "usage": self.usage,
            "metadata": self.options.get("metadata"),
        }

    def _part(self) -> dict[str, Any]:
        return (
            {"type": "output_audio", "transcript": self.text}
            if self.audio
            else {"type": "output_text", "text": self.text}
        )

    def _ensure_item(self, status: str) -> None:
        """The assistant item this response writes, once it has one."""
        if self.item is None:
            self.item = {
                "id": self.item_id,
                "object": "realtime.item",
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": [self._part()],
            }

    def _part_event(self) -> dict[str, Any]:
        """The part as the content_part events carry it: OpenAI names these `audio` and `text` (even in GA)."""
        return {"type": "audio", "transcript": self.text} if self.audio else {"type": "text", "text": self.text}

    def _ids(self) -> dict[str, Any]:
        return {"response_id": self.response.id, "item_id": self.item_id, "output_index": 0, "content_index": 0}

    async def run(self) -> None:
        s = self.session
        self.show({"type": "response.created", "response": self._response("in_progress")})
        for turn in list(s.turns.values()):  # the words of every turn heard so far are part of the context
            if not turn.transcript.done():
                with contextlib.suppress(Exception):
                    await asyncio.shield(turn.transcript)
        s.turns = {key: turn for key, turn in s.turns.items() if not turn.transcript.done()}
        input_items = self.options.get("input")
        context = s.context(self.instructions, client_items(input_items) if isinstance(input_items, list) else None)
        if self.heard is not None:  # the turn not yet committed, whose words are the question
            words = await self.heard.text
            if words:
                context.append(ChatMessage(role="user", content=words))
        if not any(message.role != "system" for message in context):
            context.append(ChatMessage(role="user", content="(silence)"))
        self._ensure_item("in_progress")
        self.show(
            {
                "type": "response.output_item.added",
                "response_id": self.response.id,
                "output_index": 0,
                "item": self.item,
            }
        )
        if self.in_conversation:
            self.visible(self._join_conversation)
        self.show({"type": "response.content_part.added", **self._ids(), "part": self._part_event()})
        await self._write_and_speak(context)
        self.visible(functools.partial(self._finish, "completed", None))

    def _join_conversation(self) -> None:
        assert self.item is not None
        previous = self.session.items[-1]["id"] if self.session.items else None
        self.session._add_item(self.item, previous, done=False)

    async def _write_and_speak(self, context: list[ChatMessage]) -> None:
        s = self.session
        chat = ChatRequest(
            messages=context,
            model=s.config.model,
            service_tier="priority",
            **({"max_tokens": self.max_tokens} if self.max_tokens else {}),
            **({"temperature": s.config.temperature} if s.config.temperature is not None else {}),
        )
        job, _ = await submit(s.state, JobKind.chat, chat, s.principal)
        self.response.jobs.append(job)
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = asyncio.create_task(self._speak(sentences)) if self.audio else None
        pending = ""
        try:
            async for event in follow(s.state, job.id):
                if event.type == EventType.token:
                    delta = event_data(EventType.token, event.data).text
                    self.text += delta
                    name = "response.output_audio_transcript.delta" if self.audio else "response.output_text.delta"
                    self.show({"type": name, **self._ids(), "delta": delta})
                    if self.audio:
                        finished, pending = complete_sentences(pending + delta)
                        for sentence in finished:
                            sentences.put_nowait(sentence)
                elif event.type == EventType.result:
                    result = GenerationResult.model_validate(event.data)
                    self.text = result.text
                    self.usage = usage(result)
            final = await s.state.store.get(job.id, owner=job.owner)
            if final is None or final.status != JobStatus.succeeded:
                raise ProtocolError(
                    f"the answer's generation ended {final.status if final else 'expired'}: "
                    f"{(final.error or {}).get('message', '') if final else ''}".rstrip(": "),
                    code="generation_failed",
                )
            if self.audio:
                if pending.strip():
                    sentences.put_nowait(pending.strip())
                sentences.put_nowait(None)
                assert speaker is not None
                await speaker
        finally:
            if speaker is not None and not speaker.done():
                speaker.cancel()

    async def _speak(self, sentences: asyncio.Queue[str | None]) -> None:
        """Speak each sentence in order, as its own `synthesize` job; the next is queued while this one plays."""
        s = self.session
        upcoming: asyncio.Queue[tuple[JobRecord, str] | None] = asyncio.Queue()

        async def queue_jobs() -> None:
            while (sentence := await sentences.get()) is not None:
                if not speakable(sentence):
                    continue
                request = resolved(
                    s.state,
                    SynthesizeRequest.model_validate(
                        {
                            "text": sentence,
                            "voice": self.voice,
                            "response_format": "pcm",
                            "sample_rate": s.config.output_format.rate,
                            "speed": s.config.speed,
                            "service_tier": "priority",
                        }
                    ),
                )
                job, _ = await submit(s.state, JobKind.synthesize, request, s.principal)
                self.response.jobs.append(job)
                upcoming.put_nowait((job, sentence))
            upcoming.put_nowait(None)

        queuer = asyncio.create_task(queue_jobs())
        try:
            while (next_job := await upcoming.get()) is not None:
                job, sentence = next_job
                async for event in follow(s.state, job.id):
                    if event.type == EventType.audio_chunk:
                        raw = event_data(EventType.audio_chunk, event.data).decoded()
                        self._play(raw)
                self.spoken.marks.append((int(self.audio_ms), sentence))
            await queuer
        finally:
            queuer.cancel()

    def _play(self, pcm16: bytes) -> None:
        s = self.session
        data = self.encoder.encode(pcm16)
        if not data:
            return
        self.audio_ms += len(pcm16) / 2 / s.config.output_format.rate * 1000
        if self.first_audio is None:
            self.visible(self._first_audio_out)
        self.show({"type": "response.output_audio.delta", **self._ids(), "delta": base64.b64encode(data).decode()})

    def _first_audio_out(self) -> None:
        self.first_audio = time.monotonic()
        if self.response.speech_end is not None:
            self.session.state.metrics.realtime_first_audio.observe(self.first_audio - self.response.speech_end)

    def _finish(self, status: str, details: dict[str, Any] | None) -> None:
        s = self.session
        assert self.item is not None
        self.item["status"] = "completed" if status == "completed" else "incomplete"
        self.item["content"] = [self._part()]
        if self.audio:
            s.emit({"type": "response.output_audio.done", **self._ids()})
            s.emit({"type": "response.output_audio_transcript.done", **self._ids(), "transcript": self.text})
            s.spoken[self.item_id] = self.spoken
        else:
            s.emit({"type": "response.output_text.done", **self._ids(), "text": self.text})
        s.emit({"type": "response.content_part.done", **self._ids(), "part": self._part_event()})
        s.emit(
            {"type": "response.output_item.done", "response_id": self.response.id, "output_index": 0, "item": self.item}
        )
        if self.in_conversation:
            s.emit({"type": "conversation.item.done", "previous_item_id": None, "item": self.item})
        s.emit({"type": "response.done", "response": self._response(status, details)})
        s.state.metrics.realtime_turns.labels(status).inc()
        s._spawn(s._save())

    async def stop(self, reason: str) -> None:
        """Cancelled (barge-in, the client's cancel, the session's end): its jobs stop, it ends `cancelled`. A
        speculative answer dropped before its turn ended was never seen: it just stops."""
        for job in self.response.jobs:
            await abandon(self.session.state, job)
        if not self.confirmed:
            self._held.clear()
            return
        self._ensure_item("incomplete")
        self._finish("cancelled", {"type": "cancelled", "reason": reason})

    async def fail(self, exc: Exception) -> None:
        for job in self.response.jobs:
            await abandon(self.session.state, job)
        message = exc.message if isinstance(exc, ProtocolError | ApiError) else as_api_error(exc).message
        code = exc.code if isinstance(exc, ProtocolError | ApiError) else "server_error"
        self._ensure_item("incomplete")
        error = {
            "type": "server_error" if code == "server_error" else "invalid_request_error",
            "code": code,
            "message": message,
        }
        self.visible(functools.partial(self._finish, "failed", {"type": "failed", "error": error}))


def usage(result: GenerationResult) -> dict[str, Any]:
    prompt, completion = result.usage.prompt_tokens, result.usage.completion_tokens
    return {
        "total_tokens": prompt + completion,
        "input_tokens": prompt,
        "output_tokens": completion,
        "input_token_details": {"text_tokens": prompt, "audio_tokens": 0, "cached_tokens": 0},
        "output_token_details": {"text_tokens": completion, "audio_tokens": 0},
    }
