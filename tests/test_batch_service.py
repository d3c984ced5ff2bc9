"""The batch service against a real Redis, without workers: sweepers advance batches atomically and never
a read; creation is all or none; finalizing survives failures, malformed results and dead finalizers;
batches stored by the previous version are picked up."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest
import redis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from api.app import create_app
from api.batch_lines import BatchCreate
from api.batch_service import MAX_FINALIZE_ATTEMPTS, BatchService
from api.batch_sweeper import BatchSweeper
from config import Settings
from contract.generation import GenerationResult, GenerationTimings, Usage
from jobstore import keys
from jobstore.batches import BatchStore, StoredBatch
from jobstore.files import FileStore
from jobstore.store import JobStore
from jobstore.webhooks import Webhook
from tasks.celery_app import create_celery
from tests.test_batches import CHAT, chat_requests

OWNER = "key_batch_tests"


class RacingStore(BatchStore):
    """Holds every sweeper that reads a batch until all of them have read it, so their writes race; counts
    the claims to write its files that landed and those refused."""

    def __init__(self, client: Redis, *, ttl: int, barrier: asyncio.Barrier, claims: list[bool]) -> None:
        super().__init__(client, ttl=ttl)
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

    async def put_batch(
        self,
        owner: str,
        batch: dict[str, Any],
        requests: list[list[str]],
        *,
        ongoing: bool,
        webhook: Webhook | None = None,
    ) -> None:
        await super().put_batch(owner, batch, requests, ongoing=ongoing, webhook=webhook)
        raise RedisConnectionError("injected: the connection dropped")


class FlakyFileStore(FileStore):
    """Refuses batch output files: the second it is asked to write (once), or with `always`, every one."""

    def __init__(self, client: Redis, raw: Redis, *, ttl: int, always: bool = False) -> None:
        super().__init__(client, raw, ttl=ttl)
        self.outputs = 0
        self.always = always

    async def put_file(
        self, owner: str, filename: str, purpose: str, data: bytes, *, quota: int | None = None
    ) -> dict[str, Any]:
        if purpose == "batch_output":
            self.outputs += 1
            if self.always or self.outputs == 2:
                raise RedisConnectionError("injected: the connection dropped")
        return await super().put_file(owner, filename, purpose, data, quota=quota)


@asynccontextmanager
async def services(
    url: str, batches: list[BatchStore] | None = None, files: FileStore | None = None
) -> AsyncIterator[list[BatchService]]:
    """A batch service per store of `batches` (each its own connections, as in separate API processes); by
    default one. `files`, when given, is the file store of every one."""
    settings = Settings(redis_url=url)
    ttl = settings.job_ttl_seconds
    async with AsyncExitStack() as exits:
        if files is not None:
            await exits.enter_async_context(files.redis)
            await exits.enter_async_context(files.raw)
        made: list[BatchService] = []
        for store in batches or [BatchStore(Redis.from_url(url, decode_responses=True), ttl=ttl)]:
            await exits.enter_async_context(store.redis)
            file_store = files or FileStore(store.redis, await exits.enter_async_context(Redis.from_url(url)), ttl=ttl)
            jobs = JobStore(store.redis, file_store.raw, create_celery(settings), ttl=ttl, max_queue_depth=0)
            made.append(BatchService(jobs, file_store, store, settings))
        yield made


async def create_chat_batch(service: BatchService, count: int) -> StoredBatch:
    uploaded = await service.files.put_file(OWNER, "in.jsonl", "batch", chat_requests(count))
    body = BatchCreate(input_file_id=uploaded["id"], endpoint="/v1/chat/completions")
    batch = await service.create(OWNER, body, request_id=None)
    read = await service.batches.get_batch(batch["id"], OWNER)
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
                ttl=3600,
                barrier=barrier,
                claims=claims,
            )
            for _ in range(sweepers)
        ]
        async with services(private_redis) as (creator,), services(private_redis, stores) as racing:
            read = await create_chat_batch(creator, 3)
            await end_jobs(creator.files.redis, await creator.batches.job_ids(read.id))
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
        store = UnrecordableStore(Redis.from_url(private_redis, decode_responses=True), ttl=3600)
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

            state = app.state.speechq  # what the sweeper does every interval:
            await BatchService(state.store, state.files, state.batches, state.settings).sweep()
            swept = (await http.get(f"/v1/batches/{done['id']}")).json()
            assert swept["status"] == "completed" and swept["error_file_id"] and swept["output_file_id"]
            assert (await http.get(f"/v1/batches/{overdue['id']}")).json()["status"] == "cancelling"

    asyncio.run(go())


def test_a_batch_past_its_window_expires_and_its_unrun_requests_say_so(private_redis: str) -> None:
    async def go() -> None:
        async with services(private_redis) as (service,):
            read = await create_chat_batch(service, 2)
            job_ids = await service.batches.job_ids(read.id)
            await end_jobs(service.files.redis, job_ids[:1])  # one answered in time, one still queued
            past = {**read.record, "expires_at": read.record["created_at"] - 1}
            await service.files.redis.hset(keys.batch(past["id"]), "record", json.dumps(past))
            await service.sweep()  # cancels what is left...
            await service.sweep()  # ...and once all has ended, writes the files
            batch = await service.get(past["id"], OWNER)
            assert batch is not None and batch["status"] == "expired" and batch["expired_at"] is not None
            assert await service.files.redis.hget(keys.job(job_ids[1]), "status") == "cancelled"
            errors = await service.files.file_content(batch["error_file_id"], OWNER)
        assert errors is not None
        [line] = [json.loads(text) for text in errors.decode().splitlines()]
        assert line["custom_id"] == "r1" and line["error"]["code"] == "batch_expired"

    asyncio.run(go())


def test_a_finalizer_that_died_is_taken_over_once_its_lease_runs_out(private_redis: str) -> None:
    async def go() -> None:
        async with services(private_redis) as (service,):
            read = await create_chat_batch(service, 2)
            await end_jobs(service.files.redis, await service.batches.job_ids(read.id))
            # A process claimed the batch to write its files, then died: its lease has run out.
            dead = await service.batches.update_batch(
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
        async with services(private_redis, files=store) as (service,):
            read = await create_chat_batch(service, 2)
            await end_jobs(service.files.redis, await service.batches.job_ids(read.id))
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


def test_a_cancel_while_another_process_finalizes_answers_once_it_has_ended(private_redis: str) -> None:
    class ReadSignal(BatchStore):
        """Says when a batch has been read."""

        def __init__(self, client: Redis, *, ttl: int) -> None:
            super().__init__(client, ttl=ttl)
            self.read = asyncio.Event()

        async def get_batch(self, batch_id: str, owner: str | None = None) -> StoredBatch | None:
            found = await super().get_batch(batch_id, owner)
            self.read.set()
            return found

    async def go() -> None:
        store = ReadSignal(Redis.from_url(private_redis, decode_responses=True), ttl=3600)
        async with services(private_redis, [store]) as (service,):
            read = await create_chat_batch(service, 2)
            # Another process has claimed the batch to write its files.
            claimed = await store.update_batch(read, {**read.record, "status": "finalizing"}, lease=time.time() + 300)
            assert claimed is not None
            store.read.clear()
            cancel = asyncio.create_task(service.cancel(read.id, OWNER))
            await store.read.wait()  # the cancel has found the batch finalizing...
            done = {**claimed.record, "status": "completed", "completed_at": int(time.time())}
            assert await store.update_batch(claimed, done, ongoing=False) is not None  # ...and then it completes
            answered = await cancel
        assert answered is not None and answered["status"] == "completed"

    asyncio.run(go())


# --- batches stored by the previous version, results that do not read back, files that cannot be written ---


def test_a_batch_stored_by_the_previous_version_is_read_and_finalized(private_redis: str) -> None:
    async def go() -> None:
        async with services(private_redis) as (service,):
            read = await create_chat_batch(service, 2)
            job_ids = await service.batches.job_ids(read.id)
            r = service.batches.redis
            # As the previous version stored it: owner, record and requests (no rev, no job_ids), not listed
            # as open; beside it that version's finalizer claim, a string under the batch's key.
            requests = await r.hget(keys.batch(read.id), "requests")
            assert requests is not None
            await r.delete(keys.batch(read.id))
            await r.hset(
                keys.batch(read.id), mapping={"owner": OWNER, "record": json.dumps(read.record), "requests": requests}
            )
            await r.zrem(keys.OPEN_BATCHES, read.id)
            await r.set(f"{keys.batch(read.id)}:finalizer", "1")

            assert await service.get(read.id, OWNER) == read.record, "it reads as it was"
            assert await service.batches.job_ids(read.id) == job_ids
            await end_jobs(r, job_ids)
            await service.sweep()
            unlisted = await service.get(read.id, OWNER)
            assert unlisted is not None and unlisted["status"] == "in_progress", "no sweep knows of it yet"

            assert await BatchSweeper(service, interval=60).tick()  # the first sweep of a process lists it
            batch = await service.get(read.id, OWNER)
            assert not await r.zscore(keys.OPEN_BATCHES, read.id)
            answers = await service.files.file_content(batch["output_file_id"], OWNER) if batch else None
        assert batch is not None and batch["status"] == "completed"
        assert batch["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
        assert answers is not None and [json.loads(line)["custom_id"] for line in answers.splitlines()] == ["r0"]

    asyncio.run(go())


def test_a_result_that_does_not_read_back_fails_only_its_own_line(
    private_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> tuple[dict[str, Any] | None, list[str], bytes | None]:
        async with services(private_redis) as (service,):
            read = await create_chat_batch(service, 3)
            job_ids = await service.batches.job_ids(read.id)
            r = service.batches.redis
            await end_jobs(r, job_ids[:1])
            await r.hset(keys.job(job_ids[1]), mapping={"status": "succeeded", "result": json.dumps({"text": 3})})
            await r.hset(keys.job(job_ids[2]), mapping={"status": "succeeded", "result": "{not json"})
            await service.sweep()
            batch = await service.get(read.id, OWNER)
            errors = await service.files.file_content(batch["error_file_id"], OWNER) if batch else None
            return batch, job_ids, errors

    batch, job_ids, errors = asyncio.run(go())
    assert batch is not None and batch["status"] == "completed" and batch["output_file_id"]
    assert batch["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    assert errors is not None
    lines = {line["custom_id"]: line for line in map(json.loads, errors.splitlines())}
    assert set(lines) == {"r1", "r2"}
    for custom_id, job_id in (("r1", job_ids[1]), ("r2", job_ids[2])):
        line = lines[custom_id]
        assert line["response"]["status_code"] == 500 and line["error"]["code"] == "internal_error"
        assert line["error"]["message"] == f"internal error (job {job_id})", "nothing of the cause"
    assert "does not read back" in caplog.text and job_ids[2] in caplog.text


def test_a_batch_whose_files_cannot_be_written_ends_failed_after_a_few_attempts(private_redis: str) -> None:
    async def go() -> None:
        files = FlakyFileStore(
            Redis.from_url(private_redis, decode_responses=True), Redis.from_url(private_redis), ttl=3600, always=True
        )
        async with services(private_redis, files=files) as (service,):
            r = service.batches.redis
            read = await create_chat_batch(service, 2)
            await end_jobs(r, await service.batches.job_ids(read.id))
            for _ in range(MAX_FINALIZE_ATTEMPTS - 1):
                await service.sweep()
                stuck = await service.get(read.id, OWNER)
                assert stuck is not None and stuck["status"] == "finalizing", "it is tried again"
            await service.sweep()
            batch = await service.get(read.id, OWNER)
            assert batch is not None and batch["status"] == "failed" and batch["failed_at"]
            assert [error["code"] for error in batch["errors"]["data"]] == ["finalize_failed"]
            assert not await r.zscore(keys.OPEN_BATCHES, read.id), "no sweep tries it again"
            assert await service.files.list_files(OWNER, purpose="batch_output") == []

            # Finalizers that died while writing count too: the claim after the last of them gives up.
            dying = await create_chat_batch(service, 1)
            await end_jobs(r, await service.batches.job_ids(dying.id))
            await r.hset(keys.batch(dying.id), "finalize_attempts", MAX_FINALIZE_ATTEMPTS)
            dead = await service.batches.update_batch(
                dying, {**dying.record, "status": "finalizing"}, lease=time.time() - 1
            )
            assert dead is not None
            outputs = files.outputs
            await service.sweep()
            given_up = await service.get(dying.id, OWNER)
            assert given_up is not None and given_up["status"] == "failed"
            assert files.outputs == outputs, "no file was tried"

    asyncio.run(go())


# --- the cost of a sweep -------------------------------------------------------------------------------


def test_one_process_sweeps_per_interval(private_redis: str) -> None:
    async def go() -> None:
        stores = [BatchStore(Redis.from_url(private_redis, decode_responses=True), ttl=3600) for _ in range(2)]
        async with services(private_redis, stores) as processes:
            read = await create_chat_batch(processes[0], 2)
            await end_jobs(stores[0].redis, await stores[0].job_ids(read.id))
            sweepers = [BatchSweeper(service, interval=60) for service in processes]
            assert sorted(await asyncio.gather(*(sweeper.tick() for sweeper in sweepers))) == [False, True]
            batch = await processes[1].get(read.id, OWNER)
            assert batch is not None and batch["status"] == "completed"
            assert not any(await asyncio.gather(*(sweeper.tick() for sweeper in sweepers))), "the turn is taken"
            assert 0 < await stores[0].redis.pttl(keys.BATCH_SWEEP_TURN) <= 60_000, "until the interval ends"

    asyncio.run(go())


def test_a_sweep_reads_no_requests_of_a_batch_still_running(private_redis: str) -> None:
    class RequestReads(BatchStore):
        """Notes each batch whose requests are read."""

        def __init__(self, client: Redis, *, ttl: int) -> None:
            super().__init__(client, ttl=ttl)
            self.read: list[str] = []

        async def requests(self, batch_id: str) -> list[list[str]]:
            self.read.append(batch_id)
            return await super().requests(batch_id)

    async def hgetall_calls(r: Redis) -> int:
        stats: dict[str, dict[str, int]] = await r.info("commandstats")
        return stats.get("cmdstat_hgetall", {}).get("calls", 0)

    async def go() -> None:
        store = RequestReads(Redis.from_url(private_redis, decode_responses=True), ttl=3600)
        async with services(private_redis, [store]) as (service,):
            running = await create_chat_batch(service, 3)
            done = await create_chat_batch(service, 2)
            before = await hgetall_calls(store.redis)
            await service.sweep()
            assert store.read == [] and await hgetall_calls(store.redis) == before, "no batch was read whole"

            await end_jobs(store.redis, await store.job_ids(done.id))
            await service.sweep()
            assert store.read == [done.id], "only the batch whose files are written"
            still = await service.get(running.id, OWNER)
            assert still is not None and still["status"] == "in_progress"

    asyncio.run(go())
