"""Streamed generation: tokens/s and time to first token through queue + SSE ÷ llama-cpp-python in-process.

Same model, prompt, sampling and thread count on both sides; runs alternate so the machine's noise
falls on both. Prints medians.

    python -m bench.streaming [--runs 7] [--tokens 256]
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

import httpx
from httpx_sse import connect_sse

from bench.harness import bench_stack, median
from contract.generation import GenerationParams

if TYPE_CHECKING:
    from llama_cpp import Llama  # the worker's extra: imported where the benchmark runs

PROMPT = "Once upon a time, in a small village by the sea,"


def in_process(llm: Llama, tokens: int) -> tuple[float, float, int]:
    # Forget the previous run's prompt: each speechq job prefills its prompt in a clean slot, so this side
    # must too (llama-cpp-python would otherwise reuse the cached prefix and skip the prompt).
    llm.reset()  # type: ignore[no-untyped-call]  # llama_cpp leaves reset() unannotated
    started = time.perf_counter()
    first = 0.0
    pieces = []
    # The sampling a speechq job uses by default (contract.generation.GenerationParams), so both sides do the same work.
    defaults = GenerationParams(temperature=0.0)
    sampling = defaults.model_dump(include={"temperature", "top_p", "top_k", "min_p", "typical_p", "repeat_penalty"})
    chunks = llm.create_completion(PROMPT, max_tokens=tokens, stream=True, **sampling)
    assert not isinstance(chunks, dict), "stream=True yields chunks, not one completion"
    for chunk in chunks:
        if chunk["choices"][0]["text"]:
            first = first or time.perf_counter() - started
            pieces.append(chunk["choices"][0]["text"])
    elapsed = time.perf_counter() - started
    # Counted the way the worker counts usage.completion_tokens, so both sides use one measure.
    count = len(llm.tokenize("".join(pieces).encode(), add_bos=False, special=False))
    return count / elapsed, first, count


def through_queue(client: httpx.Client, tokens: int) -> tuple[float, float, int]:
    started = time.perf_counter()
    job = client.post("/v1/jobs/completion", json={"prompt": PROMPT, "max_tokens": tokens, "temperature": 0.0})
    first = 0.0
    count = 0
    with connect_sse(client, "GET", f"/v1/jobs/{job.json()['id']}/events") as source:
        for event in source.iter_sse():
            if event.event == "token":
                first = first or time.perf_counter() - started
            elif event.event == "result":
                count = event.json()["usage"]["completion_tokens"]
            elif event.event == "done":
                break
    return count / (time.perf_counter() - started), first, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()

    from pathlib import Path

    from llama_cpp import Llama

    from contract.catalog import CATALOG
    from workers.weights import locate

    # llama-cpp-python's high-level API: what speechq's engine was before continuous batching.
    path = locate(CATALOG["gemma-3-270m"], Path("var/models"))
    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=2, n_threads_batch=2, verbose=False)
    local: list[tuple[float, float, int]] = []
    queued: list[tuple[float, float, int]] = []
    with bench_stack() as stack, httpx.Client(base_url=stack.url, timeout=120) as client:
        through_queue(client, 16)  # warm-up
        in_process(llm, 16)
        for _ in range(args.runs):
            local.append(in_process(llm, args.tokens))
            queued.append(through_queue(client, args.tokens))

    tps_local, tps_queue = median([r[0] for r in local]), median([r[0] for r in queued])
    ttft_local, ttft_queue = median([r[1] for r in local]), median([r[1] for r in queued])
    print(
        f"gemma-3-270m Q4_K_M, {args.tokens} tokens, temperature 0, 2 threads, median of {args.runs} alternating runs"
    )
    print("| path | tokens/s | time to first token ms |")
    print("| --- | ---: | ---: |")
    print(f"| llama-cpp-python in-process | {tps_local:.1f} | {ttft_local * 1000:.1f} |")
    print(f"| queue + worker + SSE | {tps_queue:.1f} | {ttft_queue * 1000:.1f} |")
    print(f"| ratio (queue ÷ in-process) | {tps_queue / tps_local:.3f} | {ttft_queue / ttft_local:.2f} |")


if __name__ == "__main__":
    main()
