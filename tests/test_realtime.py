"""`WS /v1/realtime`, driven by the official `openai` client's `client.realtime.connect`, as applications
drive OpenAI's Realtime API: spoken turns with server VAD, barge-in, truncate, push-to-talk, text-only
responses, transcription sessions, the beta dialect, keys, garbage and the session limit."""

from __future__ import annotations

import base64
import json
import time
import typing
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from openai import OpenAI
from openai.resources.realtime.realtime import RealtimeConnection
from openai.types.realtime import RealtimeServerEvent
from pydantic import BaseModel
from websockets.exceptions import ConnectionClosed

from tests.audio import speak, wer
from tests.conftest import Stack
from tests.stack import Process, nothing_logged_at_error, start_api, wait_until


def _event_models() -> dict[str, type[BaseModel]]:
    """Each of OpenAI's server event types, by name, as the client models it."""
    union = typing.get_args(RealtimeServerEvent)[0]
    models: dict[str, type[BaseModel]] = {}
    for model in typing.get_args(union):
        for name in typing.get_args(model.model_fields["type"].annotation):
            models[name] = model
    return models


SERVER_EVENTS = _event_models()
RATE = 24_000
CHUNK = RATE * 40 // 1000  # 40 ms
QUESTION = "What is the capital of France?"


def pcm16(text: str) -> bytes:
    """`text` spoken (hibari, 24 kHz), as the 16-bit PCM a realtime client sends."""
    audio, rate = speak(text)
    assert rate == RATE
    return bytes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def trimmed(audio: bytes) -> bytes:
    """Speech without the silence the voice leaves before and after it."""
    samples = np.frombuffer(audio, "<i2")
    loud = np.flatnonzero(np.abs(samples) > 0.02 * 32767)
    return samples[loud[0] : loud[-1] + 1].tobytes() if loud.size else audio


def silence(ms: int) -> bytes:
    return bytes(RATE * ms // 1000 * 2)


def send_audio(conn: RealtimeConnection, audio: bytes, *, pace: float = 0.0) -> None:
    """Append in 40 ms chunks; `pace` 1.0 sends in real time, 0 as fast as it can."""
    for start in range(0, len(audio), CHUNK * 2):
        conn.input_audio_buffer.append(audio=base64.b64encode(audio[start : start + CHUNK * 2]).decode())
        if pace:
            time.sleep(0.04 / pace)


def events_until(conn: RealtimeConnection, last: str, limit: int = 5_000) -> list[dict[str, Any]]:
    """Raw events up to and including the first of type `last`; each is checked against the client's own
    models of OpenAI's server events (strictly, so a misnamed or mistyped field fails)."""
    seen: list[dict[str, Any]] = []
    for _ in range(limit):
        event = json.loads(conn.recv_bytes())
        seen.append(event)
        model = SERVER_EVENTS.get(event["type"])
        assert model is not None, f"{event['type']} is none of OpenAI's server events"
        model.model_validate(event)
        if event["type"] == last:
            return seen
    raise AssertionError(f"no {last} in {[e['type'] for e in seen][-40:]}")


def events_until_all(conn: RealtimeConnection, *wanted: str) -> list[dict[str, Any]]:
    """Events until each of `wanted` has come (in any order: an input transcription may end after the
    response, as at OpenAI)."""
    seen: list[dict[str, Any]] = []
    while missing := [name for name in wanted if name not in types(seen)]:
        seen += events_until(conn, missing[0])
    return seen


def types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


@pytest.fixture(autouse=True)
def quiet_logs(stack: Stack) -> Iterator[None]:
    """Barge-in, cancels, garbage and limits are ordinary: nothing the API or the worker logs is at ERROR."""
    with nothing_logged_at_error(stack.api, stack.worker):
        yield


@pytest.fixture
def oai(stack: Stack) -> OpenAI:
    return OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def transcribed(oai: OpenAI) -> Iterator[RealtimeConnection]:
    """A realtime session with server VAD (short silences) and input transcription on."""
    with oai.realtime.connect(model="gpt-realtime") as conn:
        created = events_until(conn, "session.created")
        assert created[-1]["session"]["type"] == "realtime"
        conn.session.update(
            session={
                "type": "realtime",
                "instructions": "You are a helpful assistant. Answer in one short sentence.",
                "audio": {
                    "input": {
                        "transcription": {"model": "whisper-1"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 300},
                    },
                },
            }
        )
        events_until(conn, "session.updated")
        yield conn


def test_a_spoken_question_gets_a_spoken_answer_in_openais_order(transcribed: RealtimeConnection) -> None:
    conn = transcribed
    send_audio(conn, silence(300) + pcm16(QUESTION) + silence(800))
    events = events_until_all(conn, "response.done", "conversation.item.input_audio_transcription.completed")
    names = types(events)
    order = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ]
    positions = [names.index(name) for name in order]
    assert positions == sorted(positions), names
    completed = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert wer(QUESTION, completed["transcript"]) < 0.3, completed["transcript"]
    assert "conversation.item.input_audio_transcription.delta" in names
    transcript = next(e for e in events if e["type"] == "response.output_audio_transcript.done")["transcript"]
    assert any(c.isalpha() for c in transcript)
    audio = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    assert len(audio) > RATE * 2 * 0.3  # at least 0.3 s of 24 kHz pcm16
    done = next(e for e in events if e["type"] == "response.done")["response"]
    assert done["status"] == "completed" and done["usage"]["output_tokens"] > 0
    assert done["output"][0]["content"][0]["transcript"] == transcript


def test_speech_during_an_answer_cancels_it(transcribed: RealtimeConnection, client: httpx.Client) -> None:
    conn = transcribed
    conn.session.update(session={"type": "realtime", "instructions": "Tell a very long story about a dragon."})
    events_until(conn, "session.updated")
    send_audio(conn, pcm16("Please tell me a long story.") + silence(600))
    events_until(conn, "response.output_audio.delta")
    barged = time.monotonic()
    send_audio(conn, pcm16("Stop, stop, wait a moment."))
    events = events_until(conn, "response.done")
    arrived = time.monotonic()
    done = events[-1]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected", done
    assert "input_audio_buffer.speech_started" in types(events)
    started = types(events).index("input_audio_buffer.speech_started")
    assert "response.output_audio.delta" not in types(events)[started + 1 :]
    assert arrived - barged < 5

    # The jobs behind the answer stop: the chat and speech jobs still running were cancelled, and each
    # stopped soon after it was told (a speech job finishes the sentence it is speaking).
    def ended() -> list[dict[str, Any]] | None:
        jobs = client.get("/v1/jobs", params={"limit": 30}).json()["data"]
        stopped = [job for job in jobs if job["kind"] in ("chat", "synthesize") and job["status"] != "succeeded"]
        return stopped if stopped and all(job["status"] == "cancelled" for job in stopped) else None

    answer = wait_until(ended, timeout=10, what="the answer's jobs cancelled")
    for job in answer:
        stamps = {name: datetime.fromisoformat(when) for name, when in job["timestamps"].items()}
        if "cancelling_at" in stamps:  # it was running when cancelled
            took = (stamps["cancelled_at"] - stamps["cancelling_at"]).total_seconds()
            assert took < (0.5 if job["kind"] == "chat" else 2.0), job


def test_truncate_cuts_the_answer_to_what_was_heard(transcribed: RealtimeConnection) -> None:
    conn = transcribed
    conn.session.update(
        session={
            "type": "realtime",
            "audio": {"input": {"turn_detection": None}},
            "instructions": "Answer in three or four sentences.",
            "max_output_tokens": 80,
        }
    )
    events_until(conn, "session.updated")
    conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Describe Paris."}]}
    )
    conn.response.create()
    events = events_until(conn, "response.done")
    item = events[-1]["response"]["output"][0]
    whole = item["content"][0]["transcript"]
    audio = sum(len(base64.b64decode(e["delta"])) for e in events if e["type"] == "response.output_audio.delta")
    heard_ms = int(audio / 2 / RATE * 1000 * 0.4)
    conn.conversation.item.truncate(item_id=item["id"], content_index=0, audio_end_ms=heard_ms)
    truncated = events_until(conn, "conversation.item.truncated")[-1]
    assert truncated["audio_end_ms"] == heard_ms and truncated["item_id"] == item["id"]
    conn.conversation.item.retrieve(item_id=item["id"])
    kept = events_until(conn, "conversation.item.retrieved")[-1]["item"]["content"][0]["transcript"]
    assert len(kept) < len(whole) and whole.startswith(kept.split(" ")[0]), (kept, whole)
    conn.conversation.item.truncate(item_id=item["id"], content_index=0, audio_end_ms=10**9)
    error = events_until(conn, "error")[-1]["error"]
    assert error["param"] == "audio_end_ms"


def test_push_to_talk_and_a_text_only_response(transcribed: RealtimeConnection) -> None:
    conn = transcribed
    conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    updated = events_until(conn, "session.updated")[-1]["session"]
    assert updated["audio"]["input"]["turn_detection"] is None
    send_audio(conn, pcm16(QUESTION))
    conn.input_audio_buffer.commit()
    committed = events_until(conn, "conversation.item.input_audio_transcription.completed")
    assert "input_audio_buffer.speech_started" not in types(committed)
    conn.response.create(response={"output_modalities": ["text"], "instructions": "Answer in one word."})
    events = events_until(conn, "response.done")
    assert "response.output_audio.delta" not in types(events)
    text = next(e for e in events if e["type"] == "response.output_text.done")["text"]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text and deltas.strip() == text.strip()
    assert events[-1]["response"]["output_modalities"] == ["text"]
    conn.input_audio_buffer.commit()  # nothing in the buffer
    assert events_until(conn, "error")[-1]["error"]["code"] == "input_audio_buffer_commit_empty"


def test_a_transcription_session_streams_each_turn(oai: OpenAI) -> None:
    with oai.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        assert events_until(conn, "session.created")[-1]["session"]["type"] == "transcription"
        conn.session.update(
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "transcription": {"model": "whisper-tiny.en", "language": "en"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 300},
                    }
                },
            }
        )
        events_until(conn, "session.updated")
        sentences = ["The quick brown fox jumps over the lazy dog.", "Please send the report by Friday."]
        for sentence in sentences:
            send_audio(conn, pcm16(sentence) + silence(700))
            events = events_until(conn, "conversation.item.input_audio_transcription.completed")
            assert "conversation.item.input_audio_transcription.delta" in types(events)
            assert "response.created" not in types(events)
            assert wer(sentence, events[-1]["transcript"]) < 0.3, events[-1]["transcript"]


def test_the_beta_dialect_gets_beta_names(oai: OpenAI, stack: Stack) -> None:
    from websockets.sync.client import connect

    url = stack.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-4o-realtime-preview"
    with connect(url, additional_headers={"OpenAI-Beta": "realtime=v1"}) as ws:
        created = json.loads(ws.recv(timeout=30))
        assert created["type"] == "session.created" and created["session"]["input_audio_format"] == "pcm16"
        ws.send(
            json.dumps({"type": "session.update", "session": {"turn_detection": None, "modalities": ["text", "audio"]}})
        )
        assert json.loads(ws.recv(timeout=30))["type"] == "session.updated"
        user = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}
        ws.send(json.dumps({"type": "conversation.item.create", "item": user}))
        ws.send(json.dumps({"type": "response.create"}))
        names: list[str] = []
        while not names or names[-1] != "response.done":
            names.append(json.loads(ws.recv(timeout=60))["type"])
    assert "conversation.item.created" in names and "conversation.item.added" not in names
    assert "response.audio.delta" in names and "response.audio_transcript.delta" in names
    assert not any(name.startswith("response.output_audio") for name in names)


def test_garbage_gets_an_error_naming_the_event_and_the_session_lives(oai: OpenAI) -> None:
    with oai.realtime.connect(model="gpt-realtime") as conn:
        events_until(conn, "session.created")
        ws = conn._connection  # what the official client cannot send: raw garbage
        for raw in [
            "not json",
            "[1,2]",
            '{"type": "no.such.event", "event_id": "evt_1"}',
            '{"type": "input_audio_buffer.append", "audio": "%%%"}',
            '{"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/flac"}}}}}',
            '{"type": "conversation.item.delete", "item_id": "nope"}',
        ]:
            ws.send(raw)
            error = events_until(conn, "error")[-1]["error"]
            assert error["message"]
        assert error["param"] == "item_id"
        conn.session.update(session={"type": "realtime", "instructions": "still here"})
        assert events_until(conn, "session.updated")[-1]["session"]["instructions"] == "still here"


@pytest.fixture(scope="module")
def keyed(stack: Stack, logs_dir: Path) -> Iterator[str]:
    """A second API process on the same Redis and worker, with keys, a limit of one session a key and an idle
    close after 4 s."""
    env = {
        **stack.env,
        "API_KEY_ENABLED": "true",
        "API_KEYS": "rt-key-1,rt-key-2",
        "MAX_REALTIME_SESSIONS_PER_KEY": "1",
        "REALTIME_IDLE_TIMEOUT_SECONDS": "4",
    }
    api: Process
    api, url = start_api(env, logs_dir)
    try:
        yield url
    finally:
        api.stop()


def test_a_wrong_key_closes_with_the_realtime_error(keyed: str) -> None:
    client = OpenAI(base_url=f"{keyed}/v1", api_key="wrong", max_retries=0)
    with client.realtime.connect(model="gpt-realtime") as conn:
        error = json.loads(conn.recv_bytes())
        assert error["type"] == "error" and error["error"]["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed) as closed:
            conn.recv_bytes()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 3000


def test_the_browser_forms_of_the_key_work(keyed: str) -> None:
    from websockets.sync.client import connect

    base = keyed.replace("http://", "ws://") + "/v1/realtime"
    with connect(base, subprotocols=["realtime", "openai-insecure-api-key.rt-key-2"]) as ws:  # type: ignore[list-item]
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        assert ws.subprotocol == "realtime"
    with connect(base + "?api_key=rt-key-2") as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"


def test_a_key_past_its_session_limit_is_refused(keyed: str) -> None:
    client = OpenAI(base_url=f"{keyed}/v1", api_key="rt-key-1", max_retries=0)
    with client.realtime.connect(model="gpt-realtime") as first:
        events_until(first, "session.created")
        with client.realtime.connect(model="gpt-realtime") as second:
            error = json.loads(second.recv_bytes())
            assert error["type"] == "error" and error["error"]["code"] == "session_limit_reached"
    with client.realtime.connect(model="gpt-realtime") as again:  # the first one's place is free again
        assert events_until(again, "session.created")


def test_a_session_resumes_its_conversation_after_a_reconnect(oai: OpenAI) -> None:
    note: Any = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "My name is Ada."}]}
    with oai.realtime.connect(model="gpt-realtime") as conn:
        session_id = events_until(conn, "session.created")[-1]["session"]["id"]
        conn.session.update(session={"type": "realtime", "instructions": "Be brief."})
        events_until(conn, "session.updated")
        conn.conversation.item.create(item=note)
        item_id = events_until(conn, "conversation.item.done")[-1]["item"]["id"]
    with oai.realtime.connect(model="gpt-realtime", extra_query={"session_id": session_id}) as conn:
        created = events_until(conn, "session.created")[-1]["session"]
        assert created["id"] == session_id and created["instructions"] == "Be brief."
        conn.conversation.item.retrieve(item_id=item_id)
        item = events_until(conn, "conversation.item.retrieved")[-1]["item"]
        assert item["content"][0]["text"] == "My name is Ada."
    with oai.realtime.connect(model="gpt-realtime", extra_query={"session_id": "sess_nobody"}) as conn:
        assert json.loads(conn.recv_bytes())["error"]["code"] == "session_not_found"


def g711(pcm: bytes, codec: str) -> bytes:
    """24 kHz PCM as 8 kHz G.711, coded by FFmpeg (PyAV)."""
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=8_000)
    frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, "<i2")[None, :], format="s16", layout="mono")
    frame.sample_rate = RATE
    coder = av.CodecContext.create(codec, "w")
    coder.sample_rate, coder.layout, coder.format = 8_000, "mono", "s16"  # type: ignore[attr-defined]
    coder.open()
    return b"".join(bytes(p) for f in resampler.resample(frame) for p in coder.encode(f))  # type: ignore[attr-defined]


def test_g711_in_and_out(oai: OpenAI) -> None:
    with oai.realtime.connect(model="gpt-realtime") as conn:
        events_until(conn, "session.created")
        conn.session.update(
            session={
                "type": "realtime",
                "instructions": "Answer in one short sentence.",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcmu"},
                        "turn_detection": None,
                        "transcription": {"model": "whisper-1"},
                    },
                    "output": {"format": {"type": "audio/pcmu"}},
                },
            }
        )
        assert events_until(conn, "session.updated")[-1]["session"]["audio"]["output"]["format"]["type"] == "audio/pcmu"
        sent = g711(pcm16(QUESTION), "pcm_mulaw")
        for start in range(0, len(sent), 320):  # 40 ms at 8 kHz
            conn.input_audio_buffer.append(audio=base64.b64encode(sent[start : start + 320]).decode())
        conn.input_audio_buffer.commit()
        heard = events_until(conn, "conversation.item.input_audio_transcription.completed")[-1]["transcript"]
        assert wer(QUESTION, heard) < 0.3, heard
        conn.response.create()
        events = events_until(conn, "response.done")
    audio = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    assert len(audio) > 8_000 * 0.3  # a byte a sample at 8 kHz: at least 0.3 s


def test_an_idle_session_is_closed(keyed: str) -> None:
    client = OpenAI(base_url=f"{keyed}/v1", api_key="rt-key-2", max_retries=0)
    with client.realtime.connect(model="gpt-realtime") as conn:
        events_until(conn, "session.created")
        started = time.monotonic()
        assert events_until(conn, "error")[-1]["error"]["code"] == "session_expired"
        assert 3.5 < time.monotonic() - started < 15
        with pytest.raises(ConnectionClosed):
            conn.recv_bytes()


def test_idle_timeout_ms_nudges_with_a_response(oai: OpenAI) -> None:
    with oai.realtime.connect(model="gpt-realtime") as conn:
        events_until(conn, "session.created")
        conn.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["text"],
                "max_output_tokens": 16,
                "audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}}},
            }
        )
        events_until(conn, "session.updated")
        started = time.monotonic()
        triggered = events_until(conn, "input_audio_buffer.timeout_triggered")
        assert 4.5 < time.monotonic() - started < 15, triggered
        assert events_until(conn, "response.done")[-1]["response"]["status"] == "completed"


def test_a_pause_shorter_than_the_silence_does_not_end_the_turn(transcribed: RealtimeConnection) -> None:
    """The answer starts, unseen, when the speech pauses; speech that goes on drops it: one turn, one answer,
    to the whole question."""
    conn = transcribed
    # 150 ms between the words: over the pause (100 ms) that starts the unseen answer, under the 300 ms of
    # silence that ends a turn.
    question = trimmed(pcm16("What is the capital")) + silence(150) + trimmed(pcm16("of France?"))
    send_audio(conn, question + silence(800))
    events = events_until_all(conn, "response.done", "conversation.item.input_audio_transcription.completed")
    names = types(events)
    assert names.count("input_audio_buffer.committed") == 1 and names.count("response.created") == 1, names
    heard = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert "capital" in heard["transcript"].lower() and "france" in heard["transcript"].lower(), heard
    assert next(e for e in events if e["type"] == "response.done")["response"]["status"] == "completed"
