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
import json
import logging
import time
from collections.abc import Awaitable
from typing import Any

import numpy as np
from redis.exceptions import RedisError
from starlette.websockets import WebSocket, WebSocketDisconnect

from api.auth import Principal
from api.errors import ApiError, as_api_error
from api.realtime import protocol
from api.realtime.answer import Answer, AssistantAudio
from api.realtime.audio import Decoder
from api.realtime.formats import milliseconds, samples_at
from api.realtime.items import client_item, item_text
from api.realtime.protocol import Dialect, ProtocolError, SessionConfig, new_id
from api.realtime.settings import kept_config, update_config
from api.realtime.store import LEASE_SECONDS, SessionStore
from api.realtime.turns import Heard, Response, Turn, retrieved
from api.realtime.vad import SpeechTracker
from api.state import AppState
from contract.generation import ChatMessage

log = logging.getLogger(__name__)

MIN_COMMIT_MS = 100  # OpenAI refuses to commit less


class Closing(Exception):
    """The session ends: `code` and `reason` for the close frame (after an `error` event, if one is set)."""

    def __init__(self, code: int, reason: str, error: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.error = error


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
        task.add_done_callback(retrieved)  # a failure was announced; a response that waits suppresses it
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
