"""Scheduling: interactive work before bulk, fair shares between keys, 50,000-line batches, positions and ETAs.

Everything is measured in one run on one private stack (llm, stt, tts and dialogue workers; two API keys),
and each figure is printed beside the baseline it is judged against, measured in the same run:

1. a short `default` chat completion, idle, then sent 2 s after a 300-line `flex` batch of 32-token chats
   was created (target: within 1.5 x its idle latency + one batch job's service time);
2. a `priority` dialogue's first audio, idle, then during the same flood (same target);
3. key B's one job, sent while key A has 1,000 `default` jobs waiting (target: it waits about one of A's
   job times per slot, at most);
4. (after 5) a 50,000-line batch created, then cancelled; and a batch's lines draining against the same jobs
   submitted directly (target: >= 0.95x the direct rate);
5. `queue_position` and `estimated_start_seconds` read as jobs were queued, against when they started
   (the ETA learns the queue's service time from the jobs before: here the tenants' jobs of the same size).

    python -m bench.scheduling [--flood 300] [--tenant-jobs 1000] [--big 50000] [--drain 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import httpx
from httpx_sse import connect_sse
from redis import Redis

from bench.harness import bench_stack, median
from jobstore import keys
from tests.audio import spoken

KEY_A, KEY_B = "bench-key-a", "bench-key-b"
CHAT = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}


def client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=600, headers={"Authorization": f"Bearer {key}"})


def chat_latency(http: httpx.Client) -> float:
    started = time.perf_counter()
    response = http.post("/v1/chat/completions", json={**CHAT, "temperature": 0})
    response.raise_for_status()
    return time.perf_counter() - started


def first_audio(http: httpx.Client) -> float:
    """Submit a dialogue (priority by default) and follow it until its first audio chunk."""
    started = time.perf_counter()
    job = http.post(
        "/v1/jobs/dialogue",
        files={"file": ("q.wav", spoken("fox"), "audio/wav")},
        data={"generation_config": json.dumps({"max_tokens": 24, "temperature": 0})},
    ).json()
    with connect_sse(http, "GET", f"/v1/jobs/{job['id']}/events") as source:
        for event in source.iter_sse():
            if event.event == "audio_chunk":
                return time.perf_counter() - started
            if event.event == "done":
                raise RuntimeError(f"dialogue ended without audio: {event.data}")
    raise RuntimeError("the event stream ended early")


def batch_of(http: httpx.Client, lines: list[dict[str, Any]], endpoint: str) -> tuple[dict[str, Any], float]:
    """Upload the lines and create the batch; the batch and how long creating it took (upload apart)."""
    body = "\n".join(json.dumps(line) for line in lines).encode()
    file_id = http.post("/v1/files", files={"file": ("in.jsonl", body)}, data={"purpose": "batch"}).json()["id"]
    started = time.perf_counter()
    response = http.post(
        "/v1/batches", json={"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"}
    )
    response.raise_for_status()
    return response.json(), time.perf_counter() - started


def chat_lines(count: int, tokens: int) -> list[dict[str, Any]]:
    body = {**CHAT, "max_tokens": tokens, "temperature": 0.7}
    return [{"custom_id": f"l{n}", "method": "POST", "url": "/v1/chat/completions", "body": body} for n in range(count)]


def completion_lines(count: int) -> list[dict[str, Any]]:
    body = {"model": "gemma-3-270m", "prompt": "a", "max_tokens": 1, "temperature": 0}
    return [{"custom_id": f"c{n}", "method": "POST", "url": "/v1/completions", "body": body} for n in range(count)]


def wait_batch(http: httpx.Client, batch_id: str, timeout: float = 3600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch: dict[str, Any] = http.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.5)
    raise TimeoutError(batch_id)


def job_seconds(http: httpx.Client, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
    return job


async def submit_many(url: str, key: str, count: int, body: dict[str, Any], path: str = "/v1/jobs/chat") -> list[str]:
    limits = httpx.Limits(max_connections=16)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits, headers=headers) as http:
        semaphore = asyncio.Semaphore(16)

        async def one() -> str:
            async with semaphore:
                response = await http.post(path, json=body)
                response.raise_for_status()
                return str(response.json()["id"])

        return list(await asyncio.gather(*(one() for _ in range(count))))


def wait_jobs(http: httpx.Client, ids: list[str], timeout: float = 3600) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        pending = [job_id for job_id in pending if job_seconds(http, job_id)["status"] in ("queued", "running")]
        time.sleep(0.5)
    return [job_seconds(http, job_id) for job_id in ids]


def started_at(job: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(job["started_at"]).timestamp()


def flood(url: str, redis_url: str, lines: int) -> None:
    with client(url, KEY_A) as a, client(url, KEY_B) as b:
        for _ in range(2):  # warm both models and the dialogue path
            chat_latency(b)
            first_audio(b)
        idle_chat = median([chat_latency(b) for _ in range(5)])
        idle_audio = median([first_audio(b) for _ in range(3)])
        batch, _ = batch_of(a, chat_lines(lines, 32), "/v1/chat/completions")
        time.sleep(2.0)
        busy_chats, busy_audios = [], []
        for _ in range(5):  # while the batch drains (it takes minutes): five of each, a second apart
            busy_chats.append(chat_latency(b))
            busy_audios.append(first_audio(b))
            time.sleep(1.0)
        busy_chat, busy_audio = median(busy_chats), median(busy_audios)
        done = wait_batch(a, batch["id"])
        service = line_service(redis_url, a, done)
    chat_target = 1.5 * idle_chat + service
    audio_target = 1.5 * idle_audio + service
    print(
        f"1. short default chat (medians): idle {idle_chat:.2f} s; during a {lines}-line flex batch {busy_chat:.2f} s"
    )
    print(
        f"   one batch job's service time (median run) {service:.2f} s; target 1.5 x idle + that = {chat_target:.2f} s"
    )
    print(f"   ratio to target {busy_chat / chat_target:.2f} (<= 1 meets it); to idle {busy_chat / idle_chat:.1f}x")
    print(f"2. priority dialogue, first audio (medians): idle {idle_audio:.2f} s; during the flood {busy_audio:.2f} s")
    print(f"   target {audio_target:.2f} s; ratio to target {busy_audio / audio_target:.2f}")


def line_service(redis_url: str, http: httpx.Client, batch: dict[str, Any]) -> float:
    """Median run time of a batch's jobs (their ids from its output file; the records read from Redis, since
    a batch's jobs are not listed under the key)."""
    output = http.get(f"/v1/files/{batch['output_file_id']}/content").text
    ids = [json.loads(line)["id"].removeprefix("batch_req_") for line in output.splitlines()]
    with Redis.from_url(redis_url, decode_responses=True) as redis:
        runs = []
        for job_id in ids:
            ran, ended = redis.hmget(keys.job(job_id), ["running_at", "finished_at"])
            if ran and ended:
                runs.append(float(ended) - float(ran))
    return statistics.median(runs)


def tenants(url: str, count: int, slots: int) -> None:
    body = {**CHAT, "max_tokens": 16, "temperature": 0.7}
    with client(url, KEY_A) as a, client(url, KEY_B) as b:
        flood_ids = asyncio.run(submit_many(url, KEY_A, count, body))
        time.sleep(2.0)
        single = b.post("/v1/jobs/chat", json=body).json()["id"]
        mine = wait_jobs(b, [single])[0]
        sample = wait_jobs(a, flood_ids[:40])
        for job_id in flood_ids:
            a.delete(f"/v1/jobs/{job_id}")
    waited = mine["timings"]["queue_seconds"]
    a_job = median([job["timings"]["run_seconds"] for job in sample if job["timings"]["run_seconds"]])
    print(f"3. key B's one job while key A has {count} waiting: B waited {waited:.2f} s;")
    print(f"   one of A's jobs runs {a_job:.2f} s on {slots} slots; B's wait / A's job time = {waited / a_job:.2f}")


def drain_rate(redis_url: str, ids: list[str]) -> float:
    with Redis.from_url(redis_url, decode_responses=True) as redis:
        rows = [redis.hmget(keys.job(job_id), ["created_at", "finished_at"]) for job_id in ids]
    first = min(float(created) for created, _ in rows if created)
    last = max(float(finished) for _, finished in rows if finished)
    return len(ids) / (last - first)


def big_batch(url: str, redis_url: str, size: int, drain: int) -> None:
    with client(url, KEY_A) as a:
        batch, created = batch_of(a, completion_lines(size), "/v1/completions")
        assert batch["status"] == "in_progress", batch
        started = time.perf_counter()
        a.post(f"/v1/batches/{batch['id']}/cancel").raise_for_status()  # answers once every line has ended
        cancel_seconds = time.perf_counter() - started
        cancelled = wait_batch(a, batch["id"])
        settled_seconds = time.perf_counter() - started
        metrics = a.get("/metrics").text
        left = sum(
            float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("app_jobs_waiting{")
        )
        # Drain rates of the same 1-token completions, submitted directly (all at once) then as a batch: jobs
        # over the time from the first one's creation to the last one's end, read from their records.
        body = {"prompt": "a", "max_tokens": 1, "temperature": 0}
        ids = asyncio.run(submit_many(url, KEY_A, drain, body, path="/v1/jobs/completion"))
        wait_jobs(a, ids)
        direct = drain_rate(redis_url, ids)
        drained, _ = batch_of(a, completion_lines(drain), "/v1/completions")
        done = wait_batch(a, drained["id"])
        output = a.get(f"/v1/files/{done['output_file_id']}/content").text
        batched = drain_rate(
            redis_url, [json.loads(line)["id"].removeprefix("batch_req_") for line in output.splitlines()]
        )
    print(f"4. a {size}-line batch created in {created:.1f} s (target < 10 s); cancelled in {cancel_seconds:.1f} s,")
    print(
        f"   {cancelled['status']} with its files written {settled_seconds:.1f} s after; jobs left waiting: {left:.0f}"
    )
    print(f"   {drain} one-token completions: direct {direct:.1f} jobs/s, as a batch {batched:.1f} jobs/s")
    print(f"   ratio {batched / direct:.2f} (target >= 0.95)")


def positions(url: str, count: int) -> None:
    """Each job's position and ETA as read, against what happened after that read: how many jobs started
    between the read and its own start, and how long after the read it started."""
    body = {**CHAT, "max_tokens": 16, "temperature": 0.7}
    with client(url, KEY_A) as a:
        ids = [a.post("/v1/jobs/chat", json=body).json()["id"] for _ in range(count)]
        seen = []
        for job_id in ids:
            read_at = time.time()
            seen.append((read_at, job_seconds(a, job_id)))
        final = wait_jobs(a, ids)
    starts = [started_at(job) for job in final]
    close_position = close_eta = rated = queued = 0
    for (read_at, job), start in zip(seen, starts, strict=True):
        if "queue_position" not in job:
            continue  # already running when read
        queued += 1
        actual = sum(1 for other in starts if read_at < other < start)
        close_position += abs(job["queue_position"] - actual) <= 1
        eta, waited = job.get("estimated_start_seconds"), start - read_at
        if eta is not None and waited > 1.0:
            rated += 1
            close_eta += abs(eta - waited) <= 0.5 * waited
    print(f"5. {count} jobs: {close_position}/{queued} queue positions within +-1 of the jobs that started first;")
    print(f"   {close_eta}/{rated} ETAs (of those starting > 1 s later) within 50% of when they started")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flood", type=int, default=300)
    parser.add_argument("--tenant-jobs", type=int, default=1000)
    parser.add_argument("--big", type=int, default=50_000)
    parser.add_argument("--drain", type=int, default=200)
    parser.add_argument("--positions", type=int, default=40)
    args = parser.parse_args()
    env = {
        "API_KEY_ENABLED": "true",
        "API_KEYS": f"{KEY_A},{KEY_B}",
        "QUEUE_MAX_DEPTH": "0",
        "MAX_ACTIVE_JOBS_PER_KEY": "0",
        "STORAGE_QUOTA_MB_PER_KEY": "0",
        "MAX_UPLOAD_MB": "64",
        "LOG_LEVEL": "WARNING",
        "REDIS_MAXMEMORY_MB": "0",
    }
    with bench_stack("llm,stt,tts,dialogue", **env) as stack:
        print(f"llm slots: {4} (LLM_PARALLEL), 2-core CPU, gemma-3-270m; one run, figures side by side")
        flood(stack.url, stack.redis_url, args.flood)
        tenants(stack.url, args.tenant_jobs, 4)
        positions(stack.url, args.positions)  # after the tenants' jobs of the same size, which the ETA learns from
        big_batch(stack.url, stack.redis_url, args.big, args.drain)


if __name__ == "__main__":
    main()
