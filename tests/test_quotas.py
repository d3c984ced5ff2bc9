"""Fair shares: batch lines count against MAX_ACTIVE_JOBS_PER_KEY, a cancelled batch leaves the queue,
each key's storage is capped, a job's request is capped, and a full Redis (maxmemory) is a 507, never a
500 nor a lost job.

Each API runs on a Valkey of its own with no worker unless the test starts one: what it accepts stays
queued, so queue lengths and job records are exact.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import threading
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from redis.exceptions import OutOfMemoryError

from cli.embedded_redis import EmbeddedRedis
from config import load_settings
from contract.generation import GenerationResult, Token
from contract.jobs import EventType, JobKind, JobRecord
from contract.synthesis import SynthesisResult
from jobstore import keys
from jobstore.files import FileStore
from jobstore.storage import OverStorageQuota, StorageAccount
from tasks.celery_app import create_celery
from tasks.envelope import redis_message
from tests.records import create_job, event_types
from tests.stack import base_env, free_port, start_api, start_worker, wait_until
from workers.celery_tasks import JobRunner
from workers.context import JobContext
from workers.execution import WorkerStore

KEY_A, KEY_B = "sk-quota-a", "sk-quota-b"
SHORT_JOB = {"prompt": "Say hi.", "max_tokens": 4, "temperature": 0}
CHAT = {"model": "smollm2-135m-instruct", "max_tokens": 4, "temperature": 0}
MB = 1024 * 1024


def owner_of(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def headers(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


@contextmanager
def api_on(redis_url: str, folder: Path, **env: str) -> Iterator[httpx.Client]:
    """An API (keys A and B) on `redis_url` with no worker, and a client for it."""
    api, url = start_api(
        base_env(redis_url, folder, API_KEY_ENABLED="true", API_KEYS=f"{KEY_A},{KEY_B}", **env), folder
    )
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client
    finally:
        api.stop()


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[tuple[str, redis.Redis]]:
    with EmbeddedRedis(tmp_path / "valkey") as server:
        with redis.Redis.from_url(server.url, decode_responses=True) as client:
            yield server.url, client


def chat_lines(count: int, **body: Any) -> bytes:
    lines = [
        {
            "custom_id": f"line-{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {**CHAT, "messages": [{"role": "user", "content": f"Say {n}."}], **body},
        }
        for n in range(count)
    ]
    return ("\n".join(json.dumps(line) for line in lines) + "\n").encode()


def create_batch(client: httpx.Client, key: str, content: bytes) -> httpx.Response:
    uploaded = client.post(
        "/v1/files", files={"file": ("batch.jsonl", content)}, data={"purpose": "batch"}, headers=headers(key)
    )
    assert uploaded.status_code == 200, uploaded.text
    body = {"input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    return client.post("/v1/batches", json=body, headers=headers(key))


def job_records(r: redis.Redis) -> list[str]:
    return [key for key in r.scan_iter(match="speechq:job:*") if key.count(":") == 2]


def usage(r: redis.Redis, key: str) -> int:
    return sum(int(value) for value in r.hvals(keys.storage_usage(owner_of(key))))


def noise_wav(seconds: float, rate: int = 16_000) -> bytes:
    samples = (np.random.default_rng(7).normal(0, 500, int(seconds * rate))).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def fill(r: redis.Redis) -> list[str]:
    """Write junk until Redis refuses even a tiny write; returns the junk's keys."""
    junk: list[str] = []
    for size in (65_536, 1_024, 16):
        try:
            while True:
                r.set(f"junk:{len(junk)}", b"x" * size)
                junk.append(f"junk:{len(junk)}")
        except OutOfMemoryError:
            pass
    assert junk, "nothing could be written at all"
    return junk


def expect_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and set(error) == {"message", "type", "param", "code"}, error
    return dict(error)


# --- M1: batches wait in the scheduler, beside the key's active-job quota -----------------------------


def waiting(r: redis.Redis, tier: str = "flex") -> int:
    return int(r.hget(keys.sched("llm", "waiting"), tier) or 0)


def test_a_batch_waits_in_the_scheduler_instead_of_counting_against_the_active_job_quota(
    valkey: tuple[str, redis.Redis], tmp_path: Path
) -> None:
    url, r = valkey
    with api_on(url, tmp_path, MAX_ACTIVE_JOBS_PER_KEY="5", QUEUE_MAX_DEPTH="12") as client:
        for _ in range(2):
            assert client.post("/v1/jobs/generate", json=SHORT_JOB, headers=headers(KEY_A)).status_code == 202
        stored_before = usage(r, KEY_A)

        batch = create_batch(client, KEY_A, chat_lines(6))  # 2 + 6 > 5: a batch is not refused for that
        assert batch.status_code == 200 and batch.json()["status"] == "in_progress", batch.text
        assert batch.json()["request_counts"] == {"total": 6, "completed": 0, "failed": 0, "waiting": 6, "running": 0}
        assert waiting(r) == 6 and r.llen("llm") == 0, "no worker offers a slot: every line waits"
        assert usage(r, KEY_A) > stored_before, "its lines still count against the storage quota"
        # The key's own jobs keep their cap: 3 of 5 now, the batch's lines apart.
        for _ in range(3):
            assert client.post("/v1/jobs/generate", json=SHORT_JOB, headers=headers(KEY_A)).status_code == 202
        expect_error(
            client.post("/v1/jobs/generate", json=SHORT_JOB, headers=headers(KEY_A)), 429, "too_many_active_jobs"
        )
        # The queue depth counts what waits: 5 + 6 of 12, so a 2-line batch is refused whole, a 1-line one fits.
        expect_error(create_batch(client, KEY_B, chat_lines(2)), 503, "queue_full")
        assert waiting(r) == 6 and len(job_records(r)) == 11, "a refused batch leaves nothing"
        assert create_batch(client, KEY_B, chat_lines(1)).status_code == 200

        cancelled = client.post(f"/v1/batches/{batch.json()['id']}/cancel", headers=headers(KEY_A))
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
        assert waiting(r) == 1, "the cancelled lines left the scheduler's count at once"
        assert waiting(r, "default") == 5


def test_a_cancelled_batch_stops_counting_against_the_queue_and_a_worker_skips_what_it_gets(
    valkey: tuple[str, redis.Redis], tmp_path: Path
) -> None:
    url, r = valkey
    with api_on(url, tmp_path, QUEUE_MAX_DEPTH="4") as client:
        batch = create_batch(client, KEY_A, chat_lines(3))
        assert batch.status_code == 200, batch.text
        batch_jobs = r.lrange(keys.sched("llm", f"flex:p:{owner_of(KEY_A)}"), 0, -1)
        assert len(batch_jobs) == 3
        first = client.post("/v1/jobs/generate", json=SHORT_JOB, headers=headers(KEY_B))
        assert first.status_code == 202
        expect_error(client.post("/v1/jobs/generate", json=SHORT_JOB, headers=headers(KEY_B)), 503, "queue_full")

        assert client.post(f"/v1/batches/{batch.json()['id']}/cancel", headers=headers(KEY_A)).status_code == 200
        singles = [first.json()["id"]]
        for _ in range(3):  # the queue has room for them again
            response = client.post("/v1/jobs/generate", json=SHORT_JOB, headers=headers(KEY_B))
            assert response.status_code == 202, response.text
            singles.append(response.json()["id"])
        for job_id in singles:
            assert client.delete(f"/v1/jobs/{job_id}", headers=headers(KEY_B)).status_code == 202

        # As if their messages had reached the broker before the cancel (a worker held them, or a slot was
        # free): they reach a worker anyway, which skips each before touching a model.
        celery = create_celery(load_settings(redis_url=url))
        skipped = [*batch_jobs, *singles]
        r.lpush("llm", *[redis_message(celery, "speechq.llm.generate", "llm", job, {"job_id": job}) for job in skipped])
        metrics_port = free_port()
        env = base_env(url, tmp_path, LLM_PRELOAD="false", WORKER_METRICS_PORT=str(metrics_port))
        worker = start_worker(env, tmp_path, queues="llm")
        try:
            wait_until(lambda: worker.log().count("not run: cancelled") >= 7, timeout=120, what="the skips")
            wait_until(lambda: r.llen("llm") == 0 and not r.hlen("unacked"), timeout=30, what="an empty queue")
            metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            assert worker.alive()
        finally:
            worker.stop()
    assert "# TYPE worker_model_load_seconds gauge" in metrics
    assert "worker_model_load_seconds{" not in metrics, "no model was loaded for cancelled jobs"
    for job_id in skipped:
        record = r.hgetall(keys.job(job_id))
        assert record["status"] == "cancelled" and record["attempts"] == "0" and "started_at" not in record
        events = event_types(r, job_id)
        assert events == ["queued", "done"], (job_id, events)
    assert worker.log().count("not run: cancelled") == len(skipped)
    assert waiting(r) == 0 and waiting(r, "default") == 0


# --- M3: storage quota, request cap, maxmemory ------------------------------------------------------


def test_the_storage_quota_refuses_what_would_pass_it_and_frees_on_deletion(
    valkey: tuple[str, redis.Redis], tmp_path: Path
) -> None:
    url, r = valkey
    part = b"p" * (600 * 1024)
    with api_on(url, tmp_path, STORAGE_QUOTA_MB_PER_KEY="1") as client:

        def upload(key: str) -> httpx.Response:
            return client.post(
                "/v1/files", files={"file": ("part.bin", part)}, data={"purpose": "user_data"}, headers=headers(key)
            )

        first = upload(KEY_A)
        assert first.status_code == 200
        expect_error(upload(KEY_A), 413, "storage_quota_exceeded")
        assert [f["id"] for f in client.get("/v1/files", headers=headers(KEY_A)).json()["data"]] == [first.json()["id"]]
        assert upload(KEY_B).status_code == 200, "each key has its own quota"

        # Uploaded audio stored with a job counts too, and a queued job's is freed when it is cancelled.
        def transcribe(seconds: float) -> httpx.Response:
            return client.post(
                "/v1/jobs/transcribe", files={"file": ("a.wav", noise_wav(seconds))}, headers=headers(KEY_A)
            )

        job = transcribe(9)  # 288 KB: 600 + 288 KB fit in 1 MB
        assert job.status_code == 202, job.text
        jobs_before = len(job_records(r))
        expect_error(transcribe(9), 413, "storage_quota_exceeded")
        assert len(job_records(r)) == jobs_before, "refused before anything was stored"
        assert client.delete(f"/v1/jobs/{job.json()['id']}", headers=headers(KEY_A)).status_code == 202
        assert not r.exists(keys.input(job.json()["id"]))
        assert transcribe(9).status_code == 202

        assert client.delete(f"/v1/files/{first.json()['id']}", headers=headers(KEY_A)).status_code == 200
        assert upload(KEY_A).status_code == 200, "a deleted file gives its room back"


def test_storage_counts_fall_when_what_they_count_expires(valkey: tuple[str, redis.Redis]) -> None:
    url, r = valkey

    async def go() -> None:
        from redis.asyncio import Redis

        async with Redis.from_url(url, decode_responses=True) as client, Redis.from_url(url) as raw:
            account = StorageAccount(client, ttl=2)  # buckets of 1 s: gone at most 1 s after what they count
            await account.charge("k", 600, quota=1000)
            with pytest.raises(OverStorageQuota):
                await account.charge("k", 600, quota=1000)
            assert await account.usage("k") == 600
            async with asyncio.timeout(5):  # buckets of 1 s under a TTL of 2 s: gone within 3 s
                while await account.usage("k"):  # noqa: ASYNC110 - polls Redis: its expiry has no event to await
                    await asyncio.sleep(0.1)
            await account.charge("k", 600, quota=1000)

            files = FileStore(client, raw, ttl=60)
            record = await files.put_file("f", "a.bin", "user_data", b"z" * 700, quota=1000)
            with pytest.raises(OverStorageQuota):
                await files.put_file("f", "b.bin", "user_data", b"z" * 700, quota=1000)
            assert await files.storage.usage("f") == 700
            assert await client.ttl(keys.storage_usage("f")) > 0, "the count itself expires"
            assert await files.delete_file(record["id"], "f")
            assert await files.storage.usage("f") == 0
            assert not await raw.exists(keys.file_content(record["id"]))

    asyncio.run(go())
    assert not r.exists(keys.storage_usage("f")), "nothing counted, nothing kept"


def test_an_oversized_job_request_is_refused(valkey: tuple[str, redis.Redis], tmp_path: Path) -> None:
    url, r = valkey
    big = [{"role": "user", "content": "w" * 150_000} for _ in range(8)]  # 1.2 MB, over the default 1 MB
    with api_on(url, tmp_path) as client:
        chat = client.post("/v1/chat/completions", json={**CHAT, "messages": big}, headers=headers(KEY_A))
        expect_error(chat, 413, "request_too_large")
        long = {**SHORT_JOB, "prompt": "w" * 150_000}
        assert client.post("/v1/jobs/generate", json=long, headers=headers(KEY_A)).status_code == 202
        batch = create_batch(client, KEY_A, chat_lines(2) + chat_lines(1, messages=big).replace(b"line-0", b"big"))
        assert batch.status_code == 200 and batch.json()["status"] == "failed"
        assert [e["code"] for e in batch.json()["errors"]["data"]] == ["request_too_large"]
    assert waiting(r, "default") == 1 and waiting(r) == 0 and len(job_records(r)) == 1


def test_the_embedded_valkey_has_a_maxmemory_and_never_evicts(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "small", maxmemory_mb=8) as server, redis.Redis.from_url(server.url) as r:
        assert r.config_get("maxmemory") == {"maxmemory": str(8 * MB)}
        assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    with EmbeddedRedis(tmp_path / "default") as server, redis.Redis.from_url(server.url) as r:
        assert r.config_get("maxmemory") == {"maxmemory": str(load_settings().redis_maxmemory_mb * MB)}


def test_a_full_redis_is_answered_507_in_the_error_envelope(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "valkey", maxmemory_mb=8) as server, redis.Redis.from_url(server.url) as r:
        with api_on(server.url, tmp_path) as client:
            junk = fill(r)
            # What maxmemory weighs leaves out the AOF buffer, which on a busy disk can hold megabytes for a
            # while; a margin below the rest, so the few KB the server's housekeeping frees make no room.
            memory = r.info("memory")
            r.config_set("maxmemory", int(memory["used_memory"]) - int(memory["mem_not_counted_for_evict"]) - MB)
            with pytest.raises(OutOfMemoryError):
                r.set("probe", b"x")
            for response in (
                client.post("/v1/jobs/generate", json=SHORT_JOB, headers=headers(KEY_A)),
                client.post(
                    "/v1/files",
                    files={"file": ("a.txt", b"hello")},
                    data={"purpose": "user_data"},
                    headers=headers(KEY_A),
                ),
                client.post("/v1/jobs/transcribe", files={"file": ("a.wav", noise_wav(1))}, headers=headers(KEY_A)),
            ):
                error = expect_error(response, 507, "insufficient_storage")
                assert error["type"] == "server_error" and int(response.headers["Retry-After"]) > 0
            assert client.get("/v1/jobs", headers=headers(KEY_A)).status_code == 200, "reads still work"
            assert r.llen("llm") == 0
            r.delete(*junk)
            assert client.post("/v1/jobs/generate", json=SHORT_JOB, headers=headers(KEY_A)).status_code == 202


def test_a_full_redis_fails_a_running_job_once_there_is_room_and_loses_no_job(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "valkey", maxmemory_mb=8) as server:
        settings = load_settings(redis_url=server.url, task_time_limit_seconds=60)
        decoded = redis.Redis.from_url(server.url, decode_responses=True)
        raw = redis.Redis.from_url(server.url)
        store = WorkerStore(decoded, ttl=600, lease=5, max_attempts=3, raw=raw)

        def new_job() -> str:
            return create_job(server.url, JobKind.generate, SHORT_JOB).id

        running, waiting = new_job(), new_job()
        timers: list[threading.Timer] = []

        def full_for_a_second() -> None:
            # Another tenant fills Redis: below its used memory, maxmemory refuses every write, as when full.
            raw.config_set("maxmemory", 1)
            timer = threading.Timer(1.0, lambda: raw.config_set("maxmemory", 8 * MB))
            timer.start()
            timers.append(timer)

        def handler(job: JobRecord, run: JobContext) -> GenerationResult:
            full_for_a_second()
            run.emit(EventType.token, Token(text="hi"))
            raise AssertionError("the event cannot be stored, so the job fails before it has a result")

        runner = JobRunner(settings, store, "worker-1", {"llm": handler})
        task = SimpleNamespace(request=SimpleNamespace(request_id=None))
        started = time.monotonic()
        assert runner(task, running, "llm") == "failed"  # type: ignore[arg-type]
        assert time.monotonic() - started >= 0.9, "it waited for room to record the failure"
        record = decoded.hgetall(keys.job(running))
        assert record["status"] == "failed" and json.loads(record["error"])["type"] == "insufficient_storage"
        assert event_types(decoded, running)[-2:] == ["error", "done"]

        # A claim made while Redis is full waits too, rather than dropping a queued job's message.
        full_for_a_second()
        started = time.monotonic()
        claim = store.claim(waiting, "worker-1")
        assert time.monotonic() - started >= 0.9
        assert claim.run and decoded.hget(keys.job(waiting), "status") == "running"
        for timer in timers:
            timer.join()
        decoded.close()
        raw.close()


def test_a_cancelled_message_is_skipped_without_waiting_for_a_busy_model(tmp_path: Path) -> None:
    """On a speech queue one job holds the model's gate; a cancelled job's message behind it is skipped
    at once instead of waiting for that job to end."""
    with EmbeddedRedis(tmp_path / "valkey") as server:
        settings = load_settings(redis_url=server.url)
        decoded = redis.Redis.from_url(server.url, decode_responses=True)
        store = WorkerStore(decoded, ttl=600, lease=5, max_attempts=3)
        job_id = create_job(server.url, JobKind.synthesize, {"text": "hi"}).id
        decoded.hset(keys.job(job_id), "status", "cancelled")  # what a cancel while queued leaves
        ran: list[str] = []

        def record_run(job: JobRecord, _run: JobContext) -> SynthesisResult:
            ran.append(job.id)
            raise AssertionError("a cancelled job is never run")

        gate = threading.Semaphore(1)
        runner = JobRunner(settings, store, "worker-1", {"tts": record_run}, gates={"tts": gate})
        task = SimpleNamespace(request=SimpleNamespace(request_id=None))
        with gate:  # the model is busy with another job
            outcome: list[str] = []
            skipper = threading.Thread(target=lambda: outcome.append(runner(task, job_id, "tts")))  # type: ignore[arg-type]
            skipper.start()
            skipper.join(5)
            assert outcome == ["cancelled"]
        assert ran == []
        decoded.close()
