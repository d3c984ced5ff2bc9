"""Queue overhead: submit → `done` latency of a trivial job, and submissions per second of one API process.

Baseline for latency: the same one-token completion run in-process with llama-cpp-python, so the
difference is what the queue, Redis, the worker and SSE add. Throughput: many concurrent clients
submit while the worker drains; every job must end `succeeded` (none lost).

    python -m bench.queue_overhead [--samples 200] [--submissions 2000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
from httpx_sse import aconnect_sse

from bench.harness import bench_stack, median, percentile

TRIVIAL = {"prompt": "a", "max_tokens": 1, "temperature": 0.0}


def in_process_latencies(samples: int) -> list[float]:
    from config import Settings
    from workers.models import ModelCache

    settings = Settings(llm_n_threads=2, llm_n_ctx=2048)
    llm = ModelCache(settings).llm("gemma-3-270m")._llm
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        for _chunk in llm.create_completion("a", max_tokens=1, temperature=0.0, stream=True):
            pass
        out.append(time.perf_counter() - started)
    return out


async def queued_latencies(url: str, samples: int) -> list[float]:
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for _ in range(samples):
            started = time.perf_counter()
            job = (await client.post("/v1/jobs/completion", json=TRIVIAL)).json()
            async with aconnect_sse(client, "GET", f"/v1/jobs/{job['id']}/events") as source:
                async for event in source.aiter_sse():
                    if event.event == "done":
                        break
            out.append(time.perf_counter() - started)
    return out


async def submission_rate(url: str, total: int, concurrency: int) -> tuple[float, int, int]:
    ids: list[str] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        remaining = iter(range(total))

        async def submitter() -> None:
            nonlocal errors
            for _ in remaining:
                response = await client.post("/v1/jobs/completion", json=TRIVIAL)
                if response.status_code == 202:
                    ids.append(response.json()["id"])
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started

        succeeded = 0
        deadline = time.monotonic() + 600
        for job_id in ids:
            while time.monotonic() < deadline:
                status = (await client.get(f"/v1/jobs/{job_id}")).json()["status"]
                if status in ("succeeded", "failed", "cancelled", "expired"):
                    succeeded += status == "succeeded"
                    break
                await asyncio.sleep(0.2)
    return len(ids) / elapsed, len(ids) - succeeded + errors, len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--submissions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    baseline = in_process_latencies(args.samples)
    with bench_stack(QUEUE_MAX_DEPTH="0") as stack:
        asyncio.run(queued_latencies(stack.url, 10))  # warm-up
        queued = asyncio.run(queued_latencies(stack.url, args.samples))
        rate, lost, accepted = asyncio.run(submission_rate(stack.url, args.submissions, args.concurrency))

    ms = 1000.0
    print(f"trivial job (1-token completion, gemma-3-270m), {args.samples} samples each")
    print("| path | p50 ms | p99 ms |")
    print("| --- | ---: | ---: |")
    print(f"| in-process llama-cpp-python | {median(baseline) * ms:.2f} | {percentile(baseline, 0.99) * ms:.2f} |")
    print(f"| submit → done via queue + SSE | {median(queued) * ms:.2f} | {percentile(queued, 0.99) * ms:.2f} |")
    overhead_p50 = (median(queued) - median(baseline)) * ms
    overhead_p99 = (percentile(queued, 0.99) - percentile(baseline, 0.99)) * ms
    print(f"| overhead | {overhead_p50:.2f} | {overhead_p99:.2f} |")
    print()
    print(
        f"submissions: {accepted} accepted at {rate:.0f}/s with {args.concurrency} concurrent clients; "
        f"not succeeded or refused: {lost}"
    )


if __name__ == "__main__":
    main()
