"""Queue overhead: submit → `done` latency of a trivial job, and submissions per second of one API process.

Baseline for latency: the same one-token completion run in-process with llama-cpp-python, so the
difference is what HTTP, the queue, Redis, the worker and SSE add. The client submits
(`POST /v1/jobs/completion`) and reads the job's SSE stream until `done`: two HTTP requests.

Throughput: `wrk` (when installed: `apt-get install wrk`; a C load generator that leaves the CPU to
the API) or else concurrent httpx clients submit for a fixed time while the worker drains; then
every job created must end `succeeded` (none lost).

    python -m bench.queue_overhead [--samples 300] [--seconds 10] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from httpx_sse import connect_sse
from redis import Redis

from bench.harness import bench_stack, median, percentile
from jobstore import keys
from tests.records import owner_jobs

TRIVIAL = {"prompt": "a", "max_tokens": 1, "temperature": 0.0}
BODY = '{"prompt":"a","max_tokens":1,"temperature":0.0}'


def in_process_latencies(samples: int) -> list[float]:
    from llama_cpp import Llama

    from config import Settings
    from contract.catalog import CATALOG
    from workers.weights import locate

    path = locate(CATALOG["gemma-3-270m"], Settings().models_dir)
    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=2, verbose=False)
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        for _chunk in llm.create_completion("a", max_tokens=1, temperature=0.0, stream=True):
            pass
        out.append(time.perf_counter() - started)
    return out


def queued_latencies(url: str, samples: int) -> tuple[list[float], list[float], list[float]]:
    """Client-seen submit → done, and the server-side queue wait and run time of each job.

    A plain synchronous httpx client: the lightest Python client, so its own cost hides the least.
    """
    total, waited, ran = [], [], []
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(samples):
            started = time.perf_counter()
            job = client.post("/v1/jobs/completion", json=TRIVIAL).json()
            with connect_sse(client, "GET", f"/v1/jobs/{job['id']}/events") as source:
                for event in source.iter_sse():
                    if event.event == "done":
                        break
            total.append(time.perf_counter() - started)
            timings = client.get(f"/v1/jobs/{job['id']}").json()["timings"]
            waited.append(timings["queue_seconds"])
            ran.append(timings["run_seconds"])
    return total, waited, ran


def submit_with_wrk(url: str, seconds: int, concurrency: int) -> tuple[int, int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(
            f"wrk.method = 'POST'\nwrk.body = '{BODY}'\nwrk.headers['Content-Type'] = 'application/json'\n"
        )
        out = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "-s", str(script), f"{url}/v1/jobs/completion"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    answered = int(wrk_figure(r"(\d+) requests in", out))
    refused = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    return answered - refused, refused, float(wrk_figure(r"Requests/sec:\s+([\d.]+)", out))


def wrk_figure(pattern: str, report: str) -> str:
    """The figure `pattern` captures in wrk's report; wrk always prints these, so a miss is a bug here."""
    found = re.search(pattern, report)
    if found is None:
        raise RuntimeError(f"wrk's report has no {pattern!r}:\n{report}")
    return found.group(1)


async def submit_with_httpx(url: str, seconds: int, concurrency: int) -> tuple[int, int, float]:
    accepted = refused = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def submitter() -> None:
            nonlocal accepted, refused
            while time.perf_counter() < deadline:
                response = await client.post("/v1/jobs/completion", json=TRIVIAL)
                accepted += response.status_code == 202
                refused += response.status_code != 202

        started = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return accepted, refused, (accepted + refused) / elapsed


def drain_and_count(redis_url: str, timeout: float = 900) -> dict[str, int]:
    """Wait until no job is queued or running, then count every job's final status."""
    redis = Redis.from_url(redis_url, decode_responses=True)
    ids = owner_jobs(redis, "anonymous")
    deadline = time.monotonic() + timeout
    while True:
        with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(keys.job(job_id), "status")
            statuses = pipe.execute()
        counts: dict[str, int] = {}
        for status in statuses:
            counts[str(status)] = counts.get(str(status), 0) + 1
        if not (counts.get("queued") or counts.get("running")) or time.monotonic() > deadline:
            redis.close()
            return counts
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    baseline = in_process_latencies(args.samples)
    with bench_stack(QUEUE_MAX_DEPTH="0", MAX_ACTIVE_JOBS_PER_KEY="0", LOG_LEVEL="WARNING") as stack:
        queued_latencies(stack.url, 20)  # warm-up
        total, waited, ran = queued_latencies(stack.url, args.samples)
        before = drain_and_count(stack.redis_url)
        tool = "wrk" if shutil.which("wrk") else "httpx"
        if tool == "wrk":
            accepted, refused, rate = submit_with_wrk(stack.url, args.seconds, args.concurrency)
        else:
            accepted, refused, rate = asyncio.run(submit_with_httpx(stack.url, args.seconds, args.concurrency))
        drained_at = time.monotonic()
        counts = drain_and_count(stack.redis_url)
        drain_seconds = time.monotonic() - drained_at

    created = sum(counts.values()) - sum(before.values())
    succeeded = counts.get("succeeded", 0) - before.get("succeeded", 0)
    ms = 1000.0
    print(f"trivial job (1-token completion, gemma-3-270m), {args.samples} sequential samples each")
    print("| path | p50 ms | p99 ms |")
    print("| --- | ---: | ---: |")
    print(f"| in-process llama-cpp-python | {median(baseline) * ms:.2f} | {percentile(baseline, 0.99) * ms:.2f} |")
    print(f"| POST job + SSE until done | {median(total) * ms:.2f} | {percentile(total, 0.99) * ms:.2f} |")
    print(
        f"| overhead | {(median(total) - median(baseline)) * ms:.2f} "
        f"| {(percentile(total, 0.99) - percentile(baseline, 0.99)) * ms:.2f} |"
    )
    print(f"server side, p50: queue wait {median(waited) * ms:.2f} ms, run {median(ran) * ms:.2f} ms")
    print()
    print(f"submissions ({tool}, {args.concurrency} connections, {args.seconds}s, the worker draining meanwhile):")
    print(f"  {rate:.0f} requests/s; {accepted} accepted, {refused} refused")
    print(f"  jobs created {created}, succeeded {succeeded}, lost {created - succeeded}")
    print(f"  the queue was drained {drain_seconds:.0f}s after the last submission")


if __name__ == "__main__":
    main()
