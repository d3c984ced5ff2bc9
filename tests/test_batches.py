"""Server-side batches through the official `openai` client: files.create, batches.create/retrieve/cancel,
files.content — for chat and for transcription requests."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import redis

from jobstore import keys
from tests.audio import SENTENCES, spoken, wer
from tests.conftest import MISSING_MODEL, Stack
from tests.stack import wait_until

CHAT = {"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 24}
BRIEF = "Answer in one short sentence."


@pytest.fixture
def oai(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        yield client


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return ("\n".join(json.dumps(line) for line in lines) + "\n").encode()


def wait_for_batch(client: openai.OpenAI, batch_id: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.3)


def lines_of(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    if file_id is None:
        return {}
    text = client.files.content(file_id).text
    return {line["custom_id"]: line for line in map(json.loads, text.splitlines())}


def test_a_chat_batch_runs_every_request_and_reports_failures(oai: openai.OpenAI) -> None:
    questions = {"france": "What is the capital of France?", "italy": "What is the capital of Italy?"}
    requests = [
        {
            "custom_id": key,
            "method": "POST",
            "url": "/v1/chat/completions",
            # OpenAI's semantics (no repetition penalty): the system line keeps the tiny model brief.
            "body": {**CHAT, "messages": [{"role": "system", "content": BRIEF}, {"role": "user", "content": question}]},
        }
        for key, question in questions.items()
    ]
    requests.append(
        {
            "custom_id": "broken",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {**CHAT, "model": MISSING_MODEL, "messages": [{"role": "user", "content": "Hi"}]},
        }
    )
    uploaded = oai.files.create(file=("requests.jsonl", jsonl(requests)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    batch = oai.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"team": "qa"}
    )
    assert batch.status == "in_progress" and batch.metadata == {"team": "qa"}
    batch = wait_for_batch(oai, batch.id)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (3, 2, 1)
    answers = lines_of(oai, batch.output_file_id)
    assert set(answers) == {"france", "italy"}
    for line in answers.values():
        assert line["response"]["status_code"] == 200 and line["error"] is None
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == CHAT["model"]
        assert body["usage"]["total_tokens"] > 0
    assert "Paris" in answers["france"]["response"]["body"]["choices"][0]["message"]["content"]
    failed = lines_of(oai, batch.error_file_id)["broken"]
    assert failed["response"]["status_code"] == 503 and failed["error"]["code"] == "model_unavailable"
    assert batch.id in {b.id for b in oai.batches.list()}


def test_a_transcription_batch_over_uploaded_audio(oai: openai.OpenAI) -> None:
    names = ["fox", "weather"]
    ids = {name: oai.files.create(file=(f"{name}.wav", spoken(name)), purpose="user_data").id for name in names}
    requests = [
        {
            "custom_id": name,
            "method": "POST",
            "url": "/v1/audio/transcriptions",
            "body": {"model": "whisper-1", "file": ids[name], "response_format": "verbose_json"},
        }
        for name in names
    ]
    batch_file = oai.files.create(file=("stt.jsonl", jsonl(requests)), purpose="batch")
    batch = oai.batches.create(
        input_file_id=batch_file.id,
        endpoint="/v1/audio/transcriptions",  # type: ignore[arg-type]  # the SDK's Literal lists OpenAI's endpoints
        completion_window="24h",
    )
    batch = wait_for_batch(oai, batch.id)
    assert batch.status == "completed" and batch.error_file_id is None
    answers = lines_of(oai, batch.output_file_id)
    for name in names:
        body = answers[name]["response"]["body"]
        assert body["language"] == "en" and body["segments"]
        assert wer(SENTENCES[name], body["text"]) <= 0.15


def test_a_batch_with_bad_lines_fails_naming_them(oai: openai.OpenAI) -> None:
    good: dict[str, Any] = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {**CHAT, "messages": [{"role": "user", "content": "Hi"}]},
    }
    content = jsonl([good, {**good, "custom_id": "b", "body": {**good["body"], "temperature": 9}}, good])
    content += b"{not json\n"
    uploaded = oai.files.create(file=("bad.jsonl", content), purpose="batch")
    batch = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data is not None
    found = {(e.line, e.code) for e in batch.errors.data}
    assert found == {(2, "validation_error"), (3, "validation_error"), (4, "invalid_json_line")}
    messages = " ".join(e.message or "" for e in batch.errors.data)
    assert "temperature" in messages and "used twice" in messages
    with pytest.raises(openai.NotFoundError):
        oai.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h")


def test_cancelling_a_batch(oai: openai.OpenAI) -> None:
    long = {**CHAT, "max_tokens": 400, "stop": ["@@@"]}
    requests = [
        {
            "custom_id": f"essay-{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {**long, "messages": [{"role": "user", "content": f"Write a long essay about rivers, part {n}."}]},
        }
        for n in range(5)
    ]
    uploaded = oai.files.create(file=("long.jsonl", jsonl(requests)), purpose="batch")
    batch = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    cancelling = oai.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at is not None
    batch = wait_for_batch(oai, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    assert batch.request_counts is not None and batch.request_counts.completed < 5
    errors = lines_of(oai, batch.error_file_id)
    assert errors and {line["error"]["code"] for line in errors.values()} == {"batch_cancelled"}
    assert len(errors) + batch.request_counts.completed == 5


def chat_requests(count: int) -> bytes:
    body = {**CHAT, "max_tokens": 4, "messages": [{"role": "user", "content": "Say hi."}]}
    return jsonl(
        [{"custom_id": f"r{n}", "method": "POST", "url": "/v1/chat/completions", "body": body} for n in range(count)]
    )


def test_a_batch_completes_with_nobody_reading_it(oai: openai.OpenAI, stack: Stack) -> None:
    uploaded = oai.files.create(file=("hi.jsonl", chat_requests(2)), purpose="batch")
    batch = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    with redis.Redis.from_url(stack.redis_url, decode_responses=True) as r:

        def completed() -> dict[str, Any] | None:
            record: dict[str, Any] = json.loads(r.hget(keys.batch(batch.id), "record") or "{}")
            return record if record.get("status") == "completed" else None

        record = wait_until(completed, timeout=120, what="the batch to complete on its own")
        assert r.exists(keys.file_content(record["output_file_id"]))
        assert not r.zscore(keys.OPEN_BATCHES, batch.id)
    assert record["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    assert record["finalizing_at"] is not None and record["completed_at"] is not None
    assert set(lines_of(oai, record["output_file_id"])) == {"r0", "r1"}
