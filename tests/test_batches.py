"""Server-side batches through the official `openai` client: files.create, batches.create/retrieve/cancel,
files.content — for chat and for transcription requests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import openai
import pytest
import redis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from api.app import create_app
from api.batch_lines import BatchCreate
from api.batches import BatchService
from config import Settings
from contract.generation import GenerationResult, GenerationTimings, Usage
from jobstore import keys
from jobstore.celery_app import create_celery
from jobstore.files import BatchStore, StoredBatch
from jobstore.store import JobStore
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


# --- the batch service: advanced by sweepers, atomically, never by a read ------------------------------

OWNER = "key_batch_tests"


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


class RacingStore(BatchStore):
    """Holds every sweeper that reads a batch until all of them have read it, so their writes race; counts
    the claims to write its files that landed and those refused."""

    def __init__(self, client: Redis, raw: Redis, *, ttl: int, barrier: asyncio.Barrier, claims: list[bool]) -> None:
        super().__init__(client, raw, ttl=ttl)
        self.barrier = barrier
        self.claims = claims

    async def get_batch(self, batch_id: str, owner: str | None = None) -> StoredBatch | None:
        read = await super().get_batch(batch_id, owner)
        await self.barrier.wait()
        return read

    async def update_batch(
        self, read: StoredBatch, record: dict[str, Any], *, lease: float | None = None, ongoing: bool = True
    ) -> StoredBatch | None:
        moved = await super().update_batch(read, record, lease=lease, ongoing=ongoing)
        if record["status"] == "finalizing":
            self.claims.append(moved is not None)
        return moved


class UnrecordableStore(BatchStore):
    """Writes a new batch's record, then fails as if the connection had dropped before the reply."""

    async def put_batch(self, owner: str, batch: dict[str, Any], requests: list[list[str]], *, ongoing: bool) -> None:
        await super().put_batch(owner, batch, requests, ongoing=ongoing)
        raise RedisConnectionError("injected: the connection dropped")


class FlakyFileStore(BatchStore):
    """Refuses the second batch output file it is asked to write, once."""

    def __init__(self, client: Redis, raw: Redis, *, ttl: int) -> None:
        super().__init__(client, raw, ttl=ttl)
        self.outputs = 0

    async def put_file(
        self, owner: str, filename: str, purpose: str, data: bytes, *, quota: int | None = None
    ) -> dict[str, Any]:
        if purpose == "batch_output":
            self.outputs += 1
            if self.outputs == 2:
                raise RedisConnectionError("injected: the connection dropped")
        return await super().put_file(owner, filename, purpose, data, quota=quota)


@asynccontextmanager
async def services(url: str, files: list[BatchStore] | None = None) -> AsyncIterator[list[BatchService]]:
    """A batch service per `files` (each its own connections, as in separate API processes); by default one."""
    settings = Settings(redis_url=url)
    ttl = settings.job_ttl_seconds
    async with AsyncExitStack() as exits:
        made: list[BatchService] = []
        for store in files or [BatchStore(Redis.from_url(url, decode_responses=True), Redis.from_url(url), ttl=ttl)]:
            await exits.enter_async_context(store.redis)
            await exits.enter_async_context(store.raw)
            jobs = JobStore(store.redis, store.raw, create_celery(settings), ttl=ttl, max_queue_depth=0)
            made.append(BatchService(jobs, store, settings))
        yield made


async def create_chat_batch(service: BatchService, count: int) -> StoredBatch:
    uploaded = await service.files.put_file(OWNER, "in.jsonl", "batch", chat_requests(count))
    body = BatchCreate(input_file_id=uploaded["id"], endpoint="/v1/chat/completions")
    batch = await service.create(OWNER, body, request_id=None)
    read = await service.files.get_batch(batch["id"], OWNER)
    assert read is not None and read.status == "in_progress"
    return read


async def end_jobs(client: Redis, job_ids: list[str]) -> None:
    """As a worker would: the first job succeeds, the others fail."""
    answer = GenerationResult(
        text="Hi.",
        model=CHAT["model"],
        finish_reason="stop",
        usage=Usage.of(3, 2),
        timings=GenerationTimings(seconds=0.1, first_token_seconds=0.05, tokens_per_second=20.0),
    )
    await client.hset(
        keys.job(job_ids[0]),
        mapping={"status": "succeeded", "finished_at": time.time(), "result": answer.model_dump_json()},
    )
    for job_id in job_ids[1:]:
        error = {"type": "model_unavailable", "message": "the model is not here"}
        await client.hset(keys.job(job_id), mapping={"status": "failed", "error": json.dumps(error)})


def test_sweepers_racing_finalize_a_batch_once(private_redis: str) -> None:
    sweepers = 4

    async def go() -> None:
        barrier = asyncio.Barrier(sweepers)
        claims: list[bool] = []
        stores: list[BatchStore] = [
            RacingStore(
                Redis.from_url(private_redis, decode_responses=True),
                Redis.from_url(private_redis),
                ttl=3600,
                barrier=barrier,
                claims=claims,
            )
            for _ in range(sweepers)
        ]
        async with services(private_redis) as (creator,), services(private_redis, stores) as racing:
            read = await create_chat_batch(creator, 3)
            await end_jobs(creator.files.redis, read.job_ids)
            for _ in range(2):  # the second sweep finds nothing open
                await asyncio.gather(*(service.sweep() for service in racing))
            assert sorted(claims) == [False] * (sweepers - 1) + [True], "one claim landed, the others were refused"
            batch = await creator.get(read.record["id"], OWNER)
            files = await creator.files.list_files(OWNER, purpose="batch_output")
        assert batch is not None and batch["status"] == "completed"
        assert batch["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
        assert sorted(f["id"] for f in files) == sorted([batch["output_file_id"], batch["error_file_id"]])

    asyncio.run(go())


def test_a_failure_while_creating_a_batch_leaves_no_job_queued_and_no_batch(private_redis: str) -> None:
    async def go() -> None:
        store = UnrecordableStore(
            Redis.from_url(private_redis, decode_responses=True), Redis.from_url(private_redis), ttl=3600
        )
        async with services(private_redis, [store]) as (service,):
            with pytest.raises(RedisConnectionError, match="injected"):
                await create_chat_batch(service, 3)

    asyncio.run(go())
    with redis.Redis.from_url(private_redis, decode_responses=True) as r:
        jobs = [key for key in r.scan_iter(match=keys.job("*")) if key.count(":") == 2]
        assert len(jobs) == 3, "the jobs were created before the failure"
        assert {r.hget(job, "status") for job in jobs} == {"cancelled"}
        assert r.llen("llm") == 0, "their messages left the queue"
        assert not list(r.scan_iter(match=keys.batch("*")))
        assert not r.exists(keys.OPEN_BATCHES) and not r.exists(keys.owner_batches(OWNER))


def test_reading_a_batch_changes_nothing(private_redis: str) -> None:
    """Neither a batch whose jobs have all ended nor one past its window is moved on by a read."""

    async def go() -> None:
        app = create_app(Settings(redis_url=private_redis, batch_sweep_interval_seconds=3600))
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://api") as http,
            Redis.from_url(private_redis, decode_responses=True) as r,
        ):

            async def create() -> tuple[dict[str, Any], list[str]]:
                files = {"file": ("in.jsonl", chat_requests(2))}
                uploaded = await http.post("/v1/files", files=files, data={"purpose": "batch"})
                body = {"input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions"}
                created: dict[str, Any] = (await http.post("/v1/batches", json=body)).json()
                requests = json.loads(await r.hget(keys.batch(created["id"]), "requests") or "[]")
                return created, [job_id for _, job_id, _, _ in requests]

            (done, done_jobs), (overdue, overdue_jobs) = await create(), await create()
            await end_jobs(r, done_jobs)
            overdue = {**overdue, "expires_at": overdue["created_at"] - 1}
            await r.hset(keys.batch(overdue["id"]), "record", json.dumps(overdue))
            before = {key: await r.hgetall(key) for key in (keys.batch(done["id"]), keys.batch(overdue["id"]))}
            files_before, queued_before = set(await r.keys(keys.file("*"))), await r.llen("llm")

            for batch in (done, overdue):
                assert (await http.get(f"/v1/batches/{batch['id']}")).json() == batch
            listed = (await http.get("/v1/batches")).json()["data"]
            assert {batch["id"]: batch for batch in listed} == {done["id"]: done, overdue["id"]: overdue}
            assert {key: await r.hgetall(key) for key in before} == before
            assert set(await r.keys(keys.file("*"))) == files_before, "no output file was written"
            assert await r.llen("llm") == queued_before, "no job was cancelled"
            assert {await r.hget(keys.job(job_id), "status") for job_id in overdue_jobs} == {"queued"}

            await app.state.speechq.batch_service.sweep()  # what the sweeper does every interval
            swept = (await http.get(f"/v1/batches/{done['id']}")).json()
            assert swept["status"] == "completed" and swept["error_file_id"] and swept["output_file_id"]
            assert (await http.get(f"/v1/batches/{overdue['id']}")).json()["status"] == "cancelling"

    asyncio.run(go())


def test_a_batch_past_its_window_expires_and_its_unrun_requests_say_so(private_redis: str) -> None:
    async def go() -> None:
        async with services(private_redis) as (service,):
            read = await create_chat_batch(service, 2)
            await end_jobs(service.files.redis, read.job_ids[:1])  # one answered in time, one still queued
            past = {**read.record, "expires_at": read.record["created_at"] - 1}
            await service.files.redis.hset(keys.batch(past["id"]), "record", json.dumps(past))
            await service.sweep()  # cancels what is left...
            await service.sweep()  # ...and once all has ended, writes the files
            batch = await service.get(past["id"], OWNER)
            assert batch is not None and batch["status"] == "expired" and batch["expired_at"] is not None
            assert await service.files.redis.hget(keys.job(read.job_ids[1]), "status") == "cancelled"
            errors = await service.files.file_content(batch["error_file_id"], OWNER)
        assert errors is not None
        [line] = [json.loads(text) for text in errors.decode().splitlines()]
        assert line["custom_id"] == "r1" and line["error"]["code"] == "batch_expired"

    asyncio.run(go())


def test_a_finalizer_that_died_is_taken_over_once_its_lease_runs_out(private_redis: str) -> None:
    async def go() -> None:
        async with services(private_redis) as (service,):
            read = await create_chat_batch(service, 2)
            await end_jobs(service.files.redis, read.job_ids)
            # A process claimed the batch to write its files, then died: its lease has run out.
            dead = await service.files.update_batch(
                read, {**read.record, "status": "finalizing"}, lease=time.time() - 1
            )
            assert dead is not None
            await service.sweep()
            batch = await service.get(read.record["id"], OWNER)
            files = await service.files.list_files(OWNER, purpose="batch_output")
        assert batch is not None and batch["status"] == "completed"
        assert sorted(f["id"] for f in files) == sorted([batch["output_file_id"], batch["error_file_id"]])

    asyncio.run(go())


def test_a_failure_while_writing_the_files_leaves_no_stray_file_and_the_next_sweep_finishes(
    private_redis: str,
) -> None:
    async def go() -> None:
        store = FlakyFileStore(
            Redis.from_url(private_redis, decode_responses=True), Redis.from_url(private_redis), ttl=3600
        )
        async with services(private_redis, [store]) as (service,):
            read = await create_chat_batch(service, 2)
            await end_jobs(service.files.redis, read.job_ids)
            await service.sweep()  # the output file is written, the error file is refused
            assert await service.files.list_files(OWNER, purpose="batch_output") == []
            stuck = await service.get(read.record["id"], OWNER)
            assert stuck is not None and stuck["status"] == "finalizing"
            await service.sweep()
            batch = await service.get(read.record["id"], OWNER)
            files = await service.files.list_files(OWNER, purpose="batch_output")
        assert batch is not None and batch["status"] == "completed"
        assert sorted(f["id"] for f in files) == sorted([batch["output_file_id"], batch["error_file_id"]])

    asyncio.run(go())
