"""Spoken dialogue end to end: a question synthesized in the test is transcribed, answered by
smollm2-135m-instruct and spoken, through stage jobs on the stt, llm and tts queues."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import httpx
import numpy as np
import pytest
from httpx_sse import connect_sse
from redis import Redis
from websockets.sync.client import connect

from jobstore import keys
from tests.audio import decode_audio, encode, speak, wer
from tests.conftest import Stack
from tests.records import event_types, job_hash, owner_jobs
from tests.sse import read_events
from tests.stack import wait_until

QUESTION = "What is the capital of France?"
CHAT = {"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 48, "seed": 1}


def question(text: str = QUESTION) -> bytes:
    pcm, rate = speak(text)
    return encode(pcm, rate, "wav")


def form(**fields: Any) -> dict[str, str]:
    return {k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in fields.items()}


def transcribe(client: httpx.Client, audio: bytes) -> str:
    response = client.post("/v1/speech-to-text", files={"file": ("answer.wav", audio)})
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def test_a_spoken_question_is_answered_aloud(client: httpx.Client) -> None:
    response = client.post(
        "/v1/dialogue",
        files={"file": ("question.wav", question())},
        data=form(generation_config=CHAT, synthesis_config={"response_format": "wav"}),
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "france" in body["transcript"]["text"].lower()
    assert body["response_text"].strip()
    assert body["response_format"] == "wav" and body["media_type"] == "audio/wav" and body["sample_rate"] == 24_000
    audio = base64.b64decode(body["audio_base64"])
    pcm, rate = decode_audio(audio, "wav")
    assert rate == 24_000 and len(pcm) / rate > 0.5
    heard = transcribe(client, audio)
    assert wer(body["response_text"], heard) <= 0.3, (body["response_text"], heard)


def test_pipelined_events_in_order_and_a_follow_up_sees_the_first_turn(client: httpx.Client, stack: Stack) -> None:
    # `pipelined=true`: speechq's order on the original API's route, the reply's deltas and audio as they come.
    conversation = f"conv-{uuid.uuid4().hex[:8]}"
    fields = form(generation_config=CHAT, conversation_id=conversation, stream_audio="true", pipelined="true")
    with client.stream("POST", "/v1/dialogue", files={"file": ("q.wav", question())}, data=fields) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    events = [line["event"] for line in lines]
    assert events[0] == "metadata" and events[1] == "transcript" and events[-1] == "done"
    assert lines[0]["data"]["conversation_id"] == conversation
    assert events.index("assistant_text") < events.index("audio_chunk")
    assert set(events[2:-1]) == {"assistant_text", "audio_chunk"}
    texts = [line["data"] for line in lines if line["event"] == "assistant_text"]
    assert all("delta" in t for t in texts[:-1]) and texts[-1]["final"] is True and len(texts) > 2
    assert "".join(t["delta"] for t in texts[:-1]).strip() == texts[-1]["text"].strip()
    assert lines[-1]["data"]["status"] == "succeeded"
    chunks = [line["data"] for line in lines if line["event"] == "audio_chunk"]
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    first_answer = texts[-1]["text"]

    follow_up = client.post(
        "/v1/dialogue",
        files={"file": ("q2.wav", question("And what is its population?"))},
        data=form(generation_config=CHAT, conversation_id=conversation),
        timeout=120,
    )
    assert follow_up.status_code == 200, follow_up.text
    second = follow_up.json()
    # The conversation holds both turns, and the second turn's generation stage was given the first.
    redis = Redis.from_url(stack.redis_url, decode_responses=True)
    history = [json.loads(m) for m in redis.lrange(keys.conversation("anonymous", conversation), 0, -1)]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[1]["content"] == first_answer and history[3]["content"] == second["response_text"]
    stages = [job_hash(redis, i) for i in owner_jobs(redis, "anonymous:dialogue")]
    chat = next(s for s in stages if s.get("parent") == second["job_id"] and s["kind"] == "chat")
    sent = json.loads(chat["request"])["messages"]
    assert [m["content"] for m in sent[:2]] == [history[0]["content"], first_answer]
    assert "population" in sent[-1]["content"].lower()


def test_first_audio_arrives_before_the_answer_is_finished(client: httpx.Client) -> None:
    job = client.post(
        "/v1/jobs/dialogue",
        files={"file": ("q.wav", question("Tell me about the city of Paris."))},
        data=form(
            instructions="You are a tour guide. Answer in four or five sentences.",
            generation_config={**CHAT, "max_tokens": 160},
            synthesis_config={"response_format": "mp3"},
        ),
    )
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    assert job.json()["kind"] == "dialogue"
    arrivals: list[tuple[str, float, dict[str, Any]]] = []
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events") as source:
        for event in source.iter_sse():
            if not event.data:  # a keep-alive ping: httpx-sse reports one as an event once an id was seen
                continue
            arrivals.append((event.event, time.monotonic(), event.json()))
    kinds = [kind for kind, _, _ in arrivals]
    assert kinds[-1] == "done" and arrivals[-1][2] == {"status": "succeeded"}
    order = [k for k in kinds if k in ("metadata", "transcript", "assistant_text", "audio_chunk", "done")]
    assert order[:2] == ["metadata", "transcript"]
    final = next(n for n, (kind, _, data) in enumerate(arrivals) if kind == "assistant_text" and data.get("final"))
    first_audio = kinds.index("audio_chunk")
    assert first_audio < final, "the first sentence was spoken while the model was still writing"
    assert arrivals[first_audio][1] < arrivals[final][1]
    answer = arrivals[final][2]["text"]
    assert len([c for c in kinds if c == "audio_chunk"]) >= 3

    result = client.get(f"/v1/jobs/{job_id}/result").json()
    assert result["response_text"] == answer and result["audio_url"] == f"/v1/jobs/{job_id}/audio"
    audio = client.get(result["audio_url"])
    assert audio.headers["content-type"] == "audio/mpeg"
    pcm, rate = decode_audio(audio.content, "mp3")
    assert rate == 24_000 and abs(len(pcm) / rate - result["duration"]) < 0.2
    assert wer(answer, transcribe(client, audio.content)) <= 0.3


def test_a_failing_stage_fails_the_dialogue_with_an_error_event(client: httpx.Client) -> None:
    # OpenAudio is configured at a closed port in the test stack: the speech stage fails after retries.
    job_id = client.post(
        "/v1/jobs/dialogue",
        files={"file": ("q.wav", question())},
        data=form(generation_config=CHAT, synthesis_config={"model": "openaudio-s1-mini"}),
    ).json()["id"]
    events = read_events(client, job_id)
    assert events[-1].json() == {"status": "failed"}
    errors = [e.json() for e in events if e.event == "error"]
    assert len(errors) == 1 and errors[0]["type"] == "upstream_error"
    assert "synthesis failed" in errors[0]["message"]
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "failed"

    silence = encode(np.zeros(24_000, np.float32), 24_000)
    response = client.post("/v1/dialogue", files={"file": ("silence.wav", silence)}, data=form(generation_config=CHAT))
    assert response.status_code == 400 and "no speech" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"generation_config": {"temperature": -1}}, "generation_config.temperature"),
        ({"generation_config": "{not json"}, "generation_config"),
        ({"generation_config": {"model": 7}}, "generation_config.model"),
        ({"generation_config": {"prompt": "hi"}}, "generation_config.prompt"),
        ({"synthesis_config": {"voice": "darth"}}, "synthesis_config.voice"),
        ({"synthesis_config": {"response_format": "wma"}}, "synthesis_config.response_format"),
        ({"synthesis_config": {"text": "hi"}}, "synthesis_config.text"),
        ({"conversation_id": "has spaces"}, "conversation_id"),
    ],
)
def test_bad_configuration_is_a_422_naming_the_field(client: httpx.Client, fields: dict[str, Any], param: str) -> None:
    # The job route is speechq's own and keeps its strictness (the original API's route reads the form as the original).
    data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
    response = client.post("/v1/jobs/dialogue", files={"file": ("q.wav", question())}, data=data)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


def test_websocket_dialogue(stack: Stack) -> None:
    url = stack.url.replace("http://", "ws://") + "/v1/dialogue/ws"
    with connect(url) as ws:
        message = {
            "audio_base64": base64.b64encode(question()).decode(),
            "filename": "q.wav",
            "generation_config": CHAT,
        }
        ws.send(json.dumps(message))
        received = [json.loads(ws.recv(timeout=120))]
        while received[-1]["event"] != "done":  # the connection stays open for the next turn
            received.append(json.loads(ws.recv(timeout=120)))
    events = [m["event"] for m in received]
    assert events[:2] == ["metadata", "transcript"] and events[-1] == "done"
    assert "audio_chunk" in events and received[-1]["data"]["status"] == "succeeded"
    assert "france" in received[1]["data"]["text"].lower()


def test_cancelling_a_dialogue_cancels_its_stages(client: httpx.Client, stack: Stack) -> None:
    job_id = client.post(
        "/v1/jobs/dialogue",
        files={"file": ("q.wav", question("Tell me about the city of Paris."))},
        data=form(
            instructions="Answer at great length.", generation_config={**CHAT, "max_tokens": 1500, "stop": ["@@"]}
        ),
    ).json()["id"]
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events") as source:
        for event in source.iter_sse():
            if event.event == "assistant_text":
                assert client.delete(f"/v1/jobs/{job_id}").status_code == 202
                break
    events = read_events(client, job_id)
    assert events[-1].json() == {"status": "cancelled"}
    redis = Redis.from_url(stack.redis_url, decode_responses=True)
    stages = [job_hash(redis, i) for i in owner_jobs(redis, "anonymous:dialogue")]
    chat = next(s for s in stages if s.get("parent") == job_id and s["kind"] == "chat")

    def chat_stopped() -> bool:
        return redis.hget(keys.job(chat["id"]), "status") == "cancelled"

    wait_until(chat_stopped, timeout=10, what="the generation stage to be cancelled")


def test_a_stage_the_broker_refuses_ends_failed_rather_than_queued_forever(private_redis: str) -> None:
    """With RabbitMQ (any broker but the job store's Redis) a stage's message goes through `send_task`;
    when the broker refuses it, the stage's record ends `failed` and the dialogue is told why."""
    from config import load_settings
    from contract.errors import EngineError
    from contract.jobs import JobKind, JobRecord, JobStatus
    from tasks.celery_app import create_celery
    from tests.stack import free_port
    from workers.execution import WorkerStore
    from workers.stages import Stages

    settings = load_settings(redis_url=private_redis, celery_broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    decoded = Redis.from_url(private_redis, decode_responses=True)
    store = WorkerStore(decoded, ttl=600, lease=5, max_attempts=3, raw=Redis.from_url(private_redis))
    stages = Stages(store, create_celery(settings), settings)
    parent = JobRecord(id="job_parent", kind=JobKind.dialogue, status=JobStatus.running, owner="k", request={})
    try:
        with pytest.raises(EngineError, match="broker is unreachable"):
            stages.start(parent, "transcription", JobKind.transcribe, {"filename": "a.wav"}, audio=b"RIFF....")
    finally:
        stages.close()
    [stage] = owner_jobs(decoded, keys.stage_owner("k"))
    record = job_hash(decoded, stage)
    assert record["status"] == "failed" and json.loads(record["error"])["type"] == "broker_unavailable"
    assert event_types(decoded, stage)[-2:] == ["error", "done"]
    assert not decoded.exists(keys.input(stage))  # its audio is not kept for a job that will never run
    decoded.close()
