"""One realtime session: the client's events in, the server's out, in OpenAI's order.

Audio arrives in `input_audio_buffer.append`; with server VAD the session hears where speech starts and
stops, commits the turn as a user item and answers it. Each turn is jobs on the queue at `priority` tier:
a `transcribe` job for the user's audio, a `chat` job for the answer, and a `synthesize` job for each
sentence as soon as the answer has finished it, so the first sentence plays while the model writes the
next (as the dialogue does). Speech that starts while an answer plays cancels it and its jobs
(barge-in). The conversation is kept in Redis after every change.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from redis.exceptions import RedisError
from starlette.websockets import WebSocket, WebSocketDisconnect

from api.auth import Principal
from api.errors import ApiError, as_api_error
from api.intake.jobs import abandon, follow, submit
from api.intake.synthesis import resolved
from api.realtime import protocol
from api.realtime.audio import Decoder, Encoder, wav
from api.realtime.formats import milliseconds, samples_at
from api.realtime.protocol import Dialect, ProtocolError, SessionConfig, Transcription, new_id
from api.realtime.store import LEASE_SECONDS, SessionStore
from api.realtime.vad import SpeechTracker
from api.state import AppState
from contract.catalog import ModelRole, UnknownModel, registry
from contract.events import event_data
from contract.generation import ChatMessage, ChatRequest, GenerationResult
from contract.jobs import EventType, JobKind, JobRecord, JobStatus
from contract.speech import complete_sentences, speakable
from contract.synthesis import SynthesizeRequest
from contract.transcription import TranscribeRequest, TranscriptionResult

log = logging.getLogger(__name__)

MIN_COMMIT_MS = 100  # OpenAI refuses to commit less


class Closing(Exception):
    """The session ends: `code` and `reason` for the close frame (after an `error` event, if one is set)."""

    def __init__(self, code: int, reason: str, error: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.error = error


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


@dataclass
class Turn:
    """A user's audio turn: its item and its transcription (a task, awaited by the response)."""

    item_id: str
    transcript: asyncio.Task[str]


class Heard:
    """The words of some audio: a `transcribe` job, run in the background. Its segments queue in `deltas`
    (None last) for whoever announces them, which is after the commit even when the job started before it
    (a transcription started speculatively when the speech paused)."""

    def __init__(self, session: Session, audio: np.ndarray) -> None:
        self.session = session
        self.audio = audio
        self.deltas: asyncio.Queue[str | None] = asyncio.Queue()
        self.job: JobRecord | None = None
        self.text: asyncio.Task[str] = asyncio.create_task(self._run(), name="speechq-realtime-stt")
        self.text.add_done_callback(_retrieved)

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


class Session:
    def __init__(
        self,
        websocket: WebSocket,
        state: AppState,
        principal: Principal,
        config: SessionConfig,
        dialect: Dialect,
        store: SessionStore,
        items: list[dict[str, Any]] | None = None,
    ) -> None:
        self.websocket = websocket
        self.state = state
        self.principal = principal
        self.config = config
        self.dialect = dialect
        self.store = store
        self.items: list[dict[str, Any]] = items or []
        self.spoken: dict[str, AssistantAudio] = {}
        self.turns: dict[str, Turn] = {}
        self.speculative: Heard | None = None  # the transcription started when the speech paused
        self.speculative_answer: Answer | None = None  # and the answer to it, shown if the turn ends there
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.response: Response | None = None
        self.decoder = Decoder(config.input_format)
        self.tracker: SpeechTracker | None = None
        self.tracker_offset_ms = 0
        self.heard_samples = 0  # all audio appended in the session, at the input format's rate
        self.appended_seconds = 0.0
        self.buffer: list[np.ndarray] = []
        self.buffer_start = 0  # the session sample at which the buffer starts
        self.speech_item: str | None = None  # the item the speech under way will become
        self.speech_start_ms = 0
        self.last_activity = time.monotonic()
        self.idle_timer: asyncio.Task[None] | None = None
        self.background: set[asyncio.Task[Any]] = set()
        self._reset_tracker()

    # --- sending -------------------------------------------------------------------------------------

    def emit(self, event: dict[str, Any]) -> None:
        """Queue a server event (GA), with an event id, in the client's dialect."""
        shaped = protocol.for_dialect({"event_id": new_id("event"), **event}, self.dialect)
        if shaped is not None:
            self.outbox.put_nowait(shaped)

    def error(self, message: str, *, code: str | None, param: str | None = None, event_id: str | None = None) -> None:
        self.outbox.put_nowait(protocol.error_event(message, code=code, param=param, event_id=event_id))

    async def _writer(self) -> None:
        while (event := await self.outbox.get()) is not None:
            await self.websocket.send_text(json.dumps(event))

    # --- the session's life --------------------------------------------------------------------------

    async def run(self) -> None:
        writer = asyncio.create_task(self._writer(), name="speechq-realtime-writer")
        lease = asyncio.create_task(self._renew_lease(), name="speechq-realtime-lease")
        self.emit({"type": f"{self._kind()}.created", "session": self.config.render(self.dialect)})
        if self.config.type == "realtime" and self.dialect == "ga":
            self.emit(
                {
                    "type": "conversation.created",
                    "conversation": {"id": self._conversation_id(), "object": "realtime.conversation"},
                }
            )
        closing: Closing | None = None
        try:
            closing = await self._read()
        finally:
            if self.response is not None:
                await self._cancel_response("client_cancelled", wait=True)
            for task in (*self.background, lease, *([self.idle_timer] if self.idle_timer else [])):
                task.cancel()
            for turn in self.turns.values():
                turn.transcript.cancel()
            self._forget_speculation()
            if closing is not None:
                if closing.error is not None:
                    self.outbox.put_nowait(closing.error)
                self.outbox.put_nowait(None)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer, 5)
                with contextlib.suppress(Exception):
                    await self.websocket.close(code=closing.code, reason=closing.reason)
            writer.cancel()

    async def _read(self) -> Closing | None:
        idle = self.state.settings.realtime_idle_timeout_seconds
        while True:
            try:
                text = await asyncio.wait_for(self.websocket.receive_text(), timeout=idle)
            except TimeoutError:
                if self.response is not None:
                    continue
                message = f"the session was idle for {idle:g}s (REALTIME_IDLE_TIMEOUT_SECONDS)"
                error = protocol.error_event(message, code="session_expired", param=None, event_id=None)
                return Closing(1000, "idle", error)
            except (WebSocketDisconnect, RuntimeError):
                return None
            except KeyError:  # a binary frame
                self.error("events must be JSON text frames", code="invalid_event")
                continue
            self.last_activity = time.monotonic()
            await self._handle(text)

    async def _renew_lease(self) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 2)
            with contextlib.suppress(RedisError):
                await self.store.admit(self.principal.id, self.config.id, 0)

    async def _handle(self, text: str) -> None:
        event_id: str | None = None
        try:
            if len(text) > protocol.MAX_EVENT_BYTES:
                raise ProtocolError("the event is over 15 MiB; send audio in smaller pieces", code="event_too_large")
            try:
                event = json.loads(text)
            except ValueError:
                raise ProtocolError("the event is not valid JSON", code="invalid_json") from None
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise ProtocolError(
                    "an event is a JSON object with a string `type`", code="invalid_event", param="type"
                )
            raw_id = event.get("event_id")
            event_id = raw_id if isinstance(raw_id, str) else None
            handler = HANDLERS.get(event["type"])
            if handler is None:
                raise ProtocolError(f"unknown event type {event['type'][:64]!r}", code="invalid_event", param="type")
            await handler(self, event)
        except ProtocolError as exc:
            self.error(exc.message, code=exc.code, param=exc.param, event_id=event_id)
        except ApiError as exc:
            self.error(exc.message, code=exc.code, param=exc.param, event_id=event_id)
        except RedisError as exc:
            failure = as_api_error(exc)
            self.error(failure.message, code=failure.code, event_id=event_id)

    # --- session settings ----------------------------------------------------------------------------

    async def session_update(self, event: dict[str, Any]) -> None:
        session = event.get("session")
        if not isinstance(session, dict):
            raise ProtocolError("session.update needs a `session` object", param="session")
        if protocol.is_beta_session(session):
            self.dialect = "beta"
        update_config(self.config, session, self.state)
        self.decoder = Decoder(self.config.input_format)
        self._reset_tracker()
        self.emit({"type": f"{self._kind()}.updated", "session": self.config.render(self.dialect)})
        await self._save()

    def _kind(self) -> str:
        """The beta named a transcription session's events `transcription_session.*`; GA says `session.*`."""
        return "transcription_session" if self.dialect == "beta" and self.config.type == "transcription" else "session"

    def _reset_tracker(self) -> None:
        turn = self.config.turn_detection
        self.tracker = SpeechTracker(turn) if turn is not None else None
        self.tracker_offset_ms = milliseconds(self.heard_samples, self.config.input_format)
        self._arm_idle_timer()

    # --- the input audio buffer ----------------------------------------------------------------------

    async def append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise ProtocolError("input_audio_buffer.append needs `audio`, base64", param="audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("`audio` is not valid base64", param="audio") from None
        fmt = self.config.input_format
        seconds = (len(data) / 2 if fmt.codec is None else len(data)) / fmt.rate
        cap = self.state.settings.realtime_max_audio_seconds
        if self.appended_seconds + seconds > cap:
            raise ProtocolError(
                f"this session has appended its {cap:g}s of audio (REALTIME_MAX_AUDIO_SECONDS); open a new one",
                code="session_audio_limit",
                param="audio",
            )
        buffered = sum(part.size for part in self.buffer) / fmt.rate
        if buffered + seconds > self.state.settings.max_audio_seconds:
            raise ProtocolError(
                f"the input audio buffer holds {buffered:.0f}s; commit or clear it (MAX_AUDIO_SECONDS)",
                code="input_audio_buffer_full",
                param="audio",
            )
        self.appended_seconds += seconds
        pcm, for_vad = await asyncio.to_thread(self.decoder.decode, data)
        self.buffer.append(pcm)
        self.heard_samples += pcm.size
        if self.tracker is not None and for_vad.size:
            for change in await asyncio.to_thread(self.tracker.feed, for_vad):
                ms = change.ms + self.tracker_offset_ms
                if change.kind == "started":
                    await self._speech_started(ms)
                elif change.kind == "paused":
                    self._paused()
                elif change.kind == "resumed":
                    self._forget_speculation()
                else:
                    await self._speech_stopped(ms)

    async def _speech_started(self, ms: int) -> None:
        turn = self.config.turn_detection
        assert turn is not None
        self.speech_item = new_id("item")
        self.speech_start_ms = ms
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.emit({"type": "input_audio_buffer.speech_started", "audio_start_ms": ms, "item_id": self.speech_item})
        if self.response is not None and turn.interrupt_response:
            await self._cancel_response("turn_detected")
        # What came before the speech and its padding is not part of the turn.
        self._drop_before(samples_at(max(0, ms - turn.prefix_padding_ms), self.config.input_format))

    def _paused(self) -> None:
        """The speech paused: transcribe what was said so far, and answer it, now, unseen, so the answer is
        under way by the time the silence is long enough to end the turn; if the speech goes on, both are
        dropped (their jobs cancelled)."""
        self._forget_speculation()
        if not self.buffer:
            return
        self.speculative = Heard(self, np.concatenate(self.buffer))
        turn = self.config.turn_detection
        if turn is not None and turn.create_response and self.config.type == "realtime" and self.response is None:
            self.speculative_answer = self._prepare({}, heard=self.speculative)

    def _forget_speculation(self) -> None:
        if self.speculative_answer is not None:
            self._cancel(self.speculative_answer.response, "speculation")
            self.speculative_answer = None
        if self.speculative is not None:
            self.speculative.drop()
            self.speculative = None

    async def _speech_stopped(self, ms: int) -> None:
        turn = self.config.turn_detection
        assert turn is not None
        item_id = self.speech_item or new_id("item")
        self.speech_item = None
        self.emit({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": ms, "item_id": item_id})
        ended = time.monotonic()
        heard, self.speculative = self.speculative, None
        answer, self.speculative_answer = self.speculative_answer, None
        self._commit(item_id, heard)
        if turn.create_response and self.config.type == "realtime":
            if answer is not None:
                self._confirm(answer, ended)
            else:
                await self._start_response({}, speech_end=ended)
        elif answer is not None:
            self._cancel(answer.response, "speculation")

    def _confirm(self, answer: Answer, speech_end: float) -> None:
        """The turn ended where the speculative answer began: it becomes the response, and shows."""
        if self.response is not None:
            self._cancel(self.response, "turn_detected")
        answer.response.speech_end = speech_end
        assert answer.response.task is not None
        if not answer.response.task.done():
            self.response = answer.response
        answer.confirm()

    def _drop_before(self, sample: int) -> None:
        if sample <= self.buffer_start:
            return
        audio = np.concatenate(self.buffer) if self.buffer else np.zeros(0, np.int16)
        cut = min(sample - self.buffer_start, audio.size)
        self.buffer = [audio[cut:]]
        self.buffer_start += cut

    async def commit(self, _event: dict[str, Any]) -> None:
        fmt = self.config.input_format
        if milliseconds(sum(part.size for part in self.buffer), fmt) < MIN_COMMIT_MS:
            raise ProtocolError(
                f"buffer too small: the input audio buffer needs at least {MIN_COMMIT_MS}ms of audio to commit",
                code="input_audio_buffer_commit_empty",
            )
        self._forget_speculation()
        self._commit(self.speech_item or new_id("item"))
        self.speech_item = None

    def _commit(self, item_id: str, heard: Heard | None = None) -> None:
        audio = np.concatenate(self.buffer) if self.buffer else np.zeros(0, np.int16)
        self.buffer_start += audio.size
        self.buffer = []
        previous = self.items[-1]["id"] if self.items else None
        self.emit({"type": "input_audio_buffer.committed", "previous_item_id": previous, "item_id": item_id})
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        self._add_item(item, previous)
        heard = heard or Heard(self, audio)
        task = asyncio.create_task(self._announce(item_id, heard), name=f"speechq-realtime-stt-{item_id}")
        task.add_done_callback(_retrieved)  # a failure was announced; a response that waits suppresses it
        self.turns[item_id] = Turn(item_id, task)

    async def clear(self, _event: dict[str, Any]) -> None:
        self._forget_speculation()
        self.buffer_start += sum(part.size for part in self.buffer)
        self.buffer = []
        self.speech_item = None
        self._reset_tracker()
        self.emit({"type": "input_audio_buffer.cleared"})

    def _arm_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        turn = self.config.turn_detection
        if turn is None or turn.idle_timeout_ms is None or self.config.type != "realtime":
            return
        self.idle_timer = asyncio.create_task(self._idle(turn.idle_timeout_ms / 1000))

    async def _idle(self, seconds: float) -> None:
        """OpenAI's `idle_timeout_ms`: no speech for that long after the last answer: nudge with a response."""
        await asyncio.sleep(seconds)
        if self.response is not None or self.speech_item is not None:
            return
        now_ms = milliseconds(self.heard_samples, self.config.input_format)
        item_id = new_id("item")
        start_ms = milliseconds(self.buffer_start, self.config.input_format)
        self.emit(
            {
                "type": "input_audio_buffer.timeout_triggered",
                "audio_start_ms": start_ms,
                "audio_end_ms": now_ms,
                "item_id": item_id,
            }
        )
        self.idle_timer = None
        if self.buffer and sum(part.size for part in self.buffer):
            self._commit(item_id)
        await self._start_response({})

    # --- transcription -------------------------------------------------------------------------------

    async def _announce(self, item_id: str, heard: Heard) -> str:
        """The item's words; its deltas and result go out as events when the session asked for input
        transcription (and a failure as `failed`)."""
        announce = self.config.transcription is not None
        try:
            while (delta := await heard.deltas.get()) is not None:
                if announce:
                    self.emit(
                        {
                            "type": "conversation.item.input_audio_transcription.delta",
                            "item_id": item_id,
                            "content_index": 0,
                            "delta": delta,
                        }
                    )
            text = await heard.text
        except Exception as exc:
            if announce:
                message = exc.message if isinstance(exc, ProtocolError | ApiError) else as_api_error(exc).message
                error = {"type": "transcription_error", "code": "transcription_failed", "message": message}
                self.emit(
                    {
                        "type": "conversation.item.input_audio_transcription.failed",
                        "item_id": item_id,
                        "content_index": 0,
                        "error": {**error, "param": None},
                    }
                )
            raise
        self._set_transcript(item_id, text)
        if announce:
            usage = {"type": "duration", "seconds": round(heard.seconds, 3)}
            self.emit(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item_id,
                    "content_index": 0,
                    "transcript": text,
                    "usage": usage,
                }
            )
        await self._save()
        return text

    def _set_transcript(self, item_id: str, text: str) -> None:
        for item in self.items:
            if item["id"] == item_id:
                item["content"][0]["transcript"] = text

    # --- conversation items --------------------------------------------------------------------------

    def _add_item(self, item: dict[str, Any], previous: str | None, *, done: bool = True) -> None:
        index = len(self.items)
        if previous is not None and (self.items and self.items[-1]["id"] != previous):
            index = self._index(previous, "previous_item_id") + 1
        self.items.insert(index, item)
        self.emit({"type": "conversation.item.added", "previous_item_id": previous, "item": item})
        if done:
            self.emit({"type": "conversation.item.done", "previous_item_id": previous, "item": item})
        self._spawn(self._save())

    def _index(self, item_id: object, param: str) -> int:
        for index, item in enumerate(self.items):
            if item["id"] == item_id:
                return index
        raise ProtocolError(f"no item with id {str(item_id)[:64]!r}", code="item_not_found", param=param)

    async def item_create(self, event: dict[str, Any]) -> None:
        raw = event.get("item")
        if not isinstance(raw, dict):
            raise ProtocolError("conversation.item.create needs an `item`", param="item")
        item = client_item(raw)
        previous = event.get("previous_item_id")
        if previous == "root":
            previous = None
        elif previous is None:
            previous = self.items[-1]["id"] if self.items else None
        else:
            self._index(previous, "previous_item_id")
        if any(existing["id"] == item["id"] for existing in self.items):
            raise ProtocolError(f"an item with id {item['id']!r} exists already", code="item_exists", param="item.id")
        self._add_item(item, previous)

    async def item_delete(self, event: dict[str, Any]) -> None:
        index = self._index(event.get("item_id"), "item_id")
        item = self.items.pop(index)
        self.emit({"type": "conversation.item.deleted", "item_id": item["id"]})
        await self._save()

    async def item_retrieve(self, event: dict[str, Any]) -> None:
        item = self.items[self._index(event.get("item_id"), "item_id")]
        self.emit({"type": "conversation.item.retrieved", "item": item})

    async def item_truncate(self, event: dict[str, Any]) -> None:
        item = self.items[self._index(event.get("item_id"), "item_id")]
        if item.get("role") != "assistant" or item["content"][0].get("type") != "output_audio":
            raise ProtocolError("only an assistant message with audio can be truncated", param="item_id")
        if event.get("content_index", 0) != 0:
            raise ProtocolError("content_index must be 0", param="content_index")
        end = event.get("audio_end_ms")
        if isinstance(end, bool) or not isinstance(end, int) or end < 0:
            raise ProtocolError("audio_end_ms must be a whole number of milliseconds", param="audio_end_ms")
        spoken = self.spoken.get(item["id"], AssistantAudio())
        if end > spoken.ms:
            raise ProtocolError(
                f"audio_end_ms ({end}) is longer than the item's audio ({spoken.ms} ms)", param="audio_end_ms"
            )
        item["content"][0]["transcript"] = spoken.heard(end)
        spoken.marks = [(min(mark, end), text) for mark, text in spoken.marks if mark - end < 1]
        self.emit(
            {"type": "conversation.item.truncated", "item_id": item["id"], "content_index": 0, "audio_end_ms": end}
        )
        await self._save()

    # --- responses -----------------------------------------------------------------------------------

    async def response_create(self, event: dict[str, Any]) -> None:
        options = event.get("response") or {}
        if not isinstance(options, dict):
            raise ProtocolError("`response` must be an object", param="response")
        if self.config.type != "realtime":
            raise ProtocolError("a transcription session makes no responses", code="invalid_event")
        if self.response is not None:
            raise ProtocolError(
                f"a response is in progress ({self.response.id}); cancel it or wait for response.done",
                code="conversation_already_has_active_response",
            )
        await self._start_response(options)

    async def response_cancel(self, event: dict[str, Any]) -> None:
        wanted = event.get("response_id")
        if self.response is None or (wanted is not None and wanted != self.response.id):
            raise ProtocolError("there is no response in progress to cancel", code="response_cancel_not_active")
        await self._cancel_response("client_cancelled")

    async def _start_response(self, options: dict[str, Any], speech_end: float | None = None) -> None:
        if self.response is not None:
            await self._cancel_response("turn_detected")
        answer = self._prepare(options)  # checks the options: a bad one is an error, and no response
        answer.response.speech_end = speech_end
        self.response = answer.response

    def _prepare(self, options: dict[str, Any], heard: Heard | None = None) -> Answer:
        """A response under way: shown at once, or, for a speculative one (`heard`), once confirmed."""
        response = Response(new_id("resp"), options)
        answer = Answer(self, response)
        if heard is not None:
            answer.heard = heard
            answer.confirmed = False
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        response.task = asyncio.create_task(self._respond(answer), name=f"speechq-realtime-{response.id}")
        return answer

    async def _cancel_response(self, reason: str, *, wait: bool = False) -> None:
        response = self.response
        if response is None or response.task is None:
            return
        self._cancel(response, reason)
        if wait:
            await asyncio.wait({response.task})

    def _cancel(self, response: Response, reason: str) -> None:
        if response.task is not None:
            response.cancel_reason = reason
            response.task.cancel()

    async def _respond(self, answer: Answer) -> None:
        response = answer.response
        try:
            await answer.run()
        except asyncio.CancelledError:
            await answer.stop(response.cancel_reason or "client_cancelled")
        except Exception as exc:  # noqa: BLE001 - a failed job or Redis away: the response ends failed
            await answer.fail(exc)
        finally:
            if self.response is response:
                self.response = None
            self._arm_idle_timer()

    def context(self, instructions: str, input_items: list[dict[str, Any]] | None) -> list[ChatMessage]:
        messages = [ChatMessage(role="system", content=instructions)] if instructions else []
        for item in input_items if input_items is not None else self.items:
            if item.get("type") != "message":
                continue
            text = item_text(item)
            if text:
                messages.append(ChatMessage(role=item["role"], content=text))
        return messages

    def _conversation_id(self) -> str:
        return "conv_" + self.config.id.removeprefix("sess_")

    # --- keeping the session -------------------------------------------------------------------------

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = asyncio.create_task(run())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _save(self) -> None:
        try:
            await self.store.save(self.config.id, self.principal.id, kept_config(self.config), self.items)
        except RedisError as exc:
            log.warning("could not keep realtime session %s in Redis: %s", self.config.id, exc)


class Answer:
    """The work of one response: the words from a `chat` job, the voice from `synthesize` jobs."""

    def __init__(self, session: Session, response: Response) -> None:
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
        self.item = {
            "id": self.item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [self._part()],
        }
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
        if self.item is None:
            self.item = {
                "id": self.item_id,
                "object": "realtime.item",
                "type": "message",
                "status": "incomplete",
                "role": "assistant",
                "content": [self._part()],
            }
        self._finish("cancelled", {"type": "cancelled", "reason": reason})

    async def fail(self, exc: Exception) -> None:
        for job in self.response.jobs:
            await abandon(self.session.state, job)
        message = exc.message if isinstance(exc, ProtocolError | ApiError) else as_api_error(exc).message
        code = exc.code if isinstance(exc, ProtocolError | ApiError) else "server_error"
        if self.item is None:
            self.item = {
                "id": self.item_id,
                "object": "realtime.item",
                "type": "message",
                "status": "incomplete",
                "role": "assistant",
                "content": [self._part()],
            }
        error = {
            "type": "server_error" if code == "server_error" else "invalid_request_error",
            "code": code,
            "message": message,
        }
        self.visible(functools.partial(self._finish, "failed", {"type": "failed", "error": error}))


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Mark a background task's failure as seen (it was reported as an event), so asyncio does not log it."""
    if not task.cancelled():
        task.exception()


def usage(result: GenerationResult) -> dict[str, Any]:
    prompt, completion = result.usage.prompt_tokens, result.usage.completion_tokens
    return {
        "total_tokens": prompt + completion,
        "input_tokens": prompt,
        "output_tokens": completion,
        "input_token_details": {"text_tokens": prompt, "audio_tokens": 0, "cached_tokens": 0},
        "output_token_details": {"text_tokens": completion, "audio_tokens": 0},
    }


def item_text(item: dict[str, Any]) -> str:
    parts = []
    for part in item.get("content") or []:
        value = part.get("text") if part.get("text") is not None else part.get("transcript")
        if isinstance(value, str) and value.strip():
            parts.append(value.strip())
    return " ".join(parts)


def client_item(raw: dict[str, Any]) -> dict[str, Any]:
    """An item a client sent (`conversation.item.create`), checked and in the session's shape."""
    kind = raw.get("type", "message")
    if kind == "function_call_output" or kind == "function_call":
        raise ProtocolError(
            "tools are not supported: speechq's models call no functions", code="unsupported", param="item.type"
        )
    if kind != "message":
        raise ProtocolError(f"item.type {str(kind)[:32]!r} is not supported; use message", param="item.type")
    role = raw.get("role")
    if role not in ("user", "assistant", "system"):
        raise ProtocolError("item.role must be user, assistant or system", param="item.role")
    content = raw.get("content")
    if not isinstance(content, list) or not content:
        raise ProtocolError("item.content must be a non-empty list", param="item.content")
    parts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict):
            raise ProtocolError("each content part is an object", param=f"item.content.{index}")
        ptype = part.get("type")
        text = part.get("text", part.get("transcript"))
        allowed = {
            "user": ("input_text",),
            "system": ("input_text",),
            "assistant": ("output_text", "text", "output_audio", "audio"),
        }[role]
        if ptype not in allowed or not isinstance(text, str) or len(text) > 200_000:
            raise ProtocolError(
                f"a {role} message's content parts are {', '.join(allowed)} with `text` "
                "(audio is appended through input_audio_buffer)",
                param=f"item.content.{index}",
            )
        name = {"text": "output_text", "audio": "output_audio"}.get(ptype, ptype)
        parts.append({"type": name, "transcript": text} if name == "output_audio" else {"type": name, "text": text})
    item_id = raw.get("id")
    if item_id is not None and (not isinstance(item_id, str) or not 1 <= len(item_id) <= 64):
        raise ProtocolError("item.id must be a string of 1 to 64 characters", param="item.id")
    return {
        "id": item_id or new_id("item"),
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": role,
        "content": parts,
    }


def client_items(raw: list[Any]) -> list[dict[str, Any]]:
    return [client_item(item) for item in raw if isinstance(item, dict)]


# --- settings --------------------------------------------------------------------------------------


def conversation_model(name: str | None, state: AppState) -> tuple[str, str]:
    """(the registered LLM that answers, the name the client used) for a session's `model`."""
    if name is None or name.startswith(protocol.OPENAI_REALTIME_PREFIXES):
        return state.settings.dialogue_model, name or state.settings.dialogue_model
    try:
        return registry().lookup(name, ModelRole.llm).name, name
    except UnknownModel:
        raise ProtocolError(
            f"model {name[:64]!r} is not a language model served here; GET /v1/models lists them",
            code="model_not_found",
            param="model",
        ) from None


def transcription_model(value: object, param: str) -> tuple[Transcription | None, str | None]:
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise ProtocolError(f"{param} must be an object or null", param=param)
    name = value.get("model")
    model: str | None = None
    if name is not None and name not in protocol.OPENAI_TRANSCRIBE_MODELS:
        try:
            model = registry().lookup(str(name), ModelRole.stt).name
        except UnknownModel:
            raise ProtocolError(
                f"{param}.model {str(name)[:64]!r} is not a speech-to-text model served here",
                code="model_not_found",
                param=f"{param}.model",
            ) from None
    language = value.get("language")
    if language is not None and (not isinstance(language, str) or not 2 <= len(language) <= 8):
        raise ProtocolError(f"{param}.language must be a language code such as en", param=f"{param}.language")
    prompt = value.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ProtocolError(f"{param}.prompt must be a string", param=f"{param}.prompt")
    return Transcription(model, language or None, prompt or None), name if isinstance(name, str) else None


def update_config(config: SessionConfig, session: dict[str, Any], state: AppState) -> None:
    """Apply a `session.update` (GA or beta shape) to `config`; a bad field is a ProtocolError naming it, and
    then nothing is changed."""
    new = SessionConfig(**{**config.__dict__})
    _general(new, session, state)
    _beta_fields(new, session)
    audio = session.get("audio")
    if audio is not None:
        if not isinstance(audio, dict):
            raise ProtocolError("session.audio must be an object", param="session.audio")
        _audio_input(new, audio.get("input") or {})
        _audio_output(new, audio.get("output") or {})
    if session.get("tools"):
        raise ProtocolError(
            "tools are not supported: speechq's models call no functions", code="unsupported", param="session.tools"
        )
    config.__dict__.update(new.__dict__)


def _general(new: SessionConfig, session: dict[str, Any], state: AppState) -> None:
    kind = session.get("type")
    if kind is not None:
        if kind not in ("realtime", "transcription"):
            raise ProtocolError("session.type must be realtime or transcription", param="session.type")
        new.type = kind
    if "model" in session:
        model = session["model"]
        if not isinstance(model, str):
            raise ProtocolError("session.model must be a string", param="session.model")
        new.model, new.requested_model = conversation_model(model, state)
    if "instructions" in session:
        new.instructions = protocol.text(session["instructions"], "session.instructions", 20_000)
    if "output_modalities" in session:
        new.output_modalities = protocol.modalities(session["output_modalities"], "session.output_modalities")
    for key in ("max_output_tokens", "max_response_output_tokens"):
        if key in session:
            new.max_output_tokens = protocol.token_limit(session[key], f"session.{key}")
    if "temperature" in session:
        new.temperature = protocol.bounded(session["temperature"], "session.temperature", 0.0, 2.0)


def _beta_fields(new: SessionConfig, session: dict[str, Any]) -> None:
    if "voice" in session:
        new.voice = protocol.text(session["voice"], "session.voice", 128)
    if "modalities" in session:
        new.output_modalities = protocol.modalities(session["modalities"], "session.modalities")
    if "input_audio_format" in session:
        new.input_format = protocol.fmt(session["input_audio_format"], "session.input_audio_format")
    if "output_audio_format" in session:
        new.output_format = protocol.fmt(session["output_audio_format"], "session.output_audio_format")
    if "turn_detection" in session:
        new.turn_detection = protocol.turn_detection(
            session["turn_detection"], new.turn_detection, "session.turn_detection"
        )
    if "input_audio_transcription" in session:
        new.transcription, new.transcription_requested = transcription_model(
            session["input_audio_transcription"], "session.input_audio_transcription"
        )


def _audio_input(new: SessionConfig, audio_in: dict[str, Any]) -> None:
    name = "session.audio.input"
    if "format" in audio_in:
        new.input_format = protocol.fmt(audio_in["format"], f"{name}.format")
    if "turn_detection" in audio_in:
        new.turn_detection = protocol.turn_detection(
            audio_in["turn_detection"], new.turn_detection, f"{name}.turn_detection"
        )
    if "transcription" in audio_in:
        new.transcription, new.transcription_requested = transcription_model(
            audio_in["transcription"], f"{name}.transcription"
        )


def _audio_output(new: SessionConfig, audio_out: dict[str, Any]) -> None:
    name = "session.audio.output"
    if "format" in audio_out:
        new.output_format = protocol.fmt(audio_out["format"], f"{name}.format")
    if "voice" in audio_out:
        new.voice = protocol.text(audio_out["voice"], f"{name}.voice", 128)
    if "speed" in audio_out:
        new.speed = protocol.bounded(audio_out["speed"], f"{name}.speed", 0.25, 4.0)


def kept_config(config: SessionConfig) -> dict[str, Any]:
    """The settings a resumed session gets back (`session.update` in GA terms)."""
    rendered = config.render("ga")
    rendered["model"] = config.requested_model or config.model
    return rendered


def restored(config: SessionConfig, kept: dict[str, Any], state: AppState) -> None:
    kept = {
        k: v
        for k, v in kept.items()
        if k not in ("id", "object", "expires_at", "tracing", "prompt", "truncation", "include", "tool_choice", "tools")
    }
    update_config(config, kept, state)


HANDLERS = {
    "session.update": Session.session_update,
    "transcription_session.update": Session.session_update,
    "input_audio_buffer.append": Session.append,
    "input_audio_buffer.commit": Session.commit,
    "input_audio_buffer.clear": Session.clear,
    "conversation.item.create": Session.item_create,
    "conversation.item.delete": Session.item_delete,
    "conversation.item.retrieve": Session.item_retrieve,
    "conversation.item.truncate": Session.item_truncate,
    "response.create": Session.response_create,
    "response.cancel": Session.response_cancel,
}
