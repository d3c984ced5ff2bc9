"""Continuous batching: aggregate tokens/s and time to first token at 1, 2, 4 and 8 concurrent clients,
through queue + worker + SSE ÷ llama.cpp's own batched decoding of the same GGUF in-process.

The baseline is llama-cpp-python's low-level API in a tight loop, as llama.cpp's `batched` example does it:
every prompt prefilled in one batch, then one token per sequence per `llama_decode`, sampled greedily, no
text handling, no Redis. speechq runs the same prompts as completion jobs at temperature 0 with its default
sampling, LLM_PARALLEL=8, the same threads. Runs alternate so the machine's noise falls on both; medians.

    python -m bench.batching [--runs 3] [--tokens 128] [--clients 1,2,4,8]
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from httpx_sse import connect_sse

from bench.harness import bench_stack, median, percentile

PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "The old lighthouse keeper climbed the stairs and",
    "Deep in the forest, the children found",
    "On the first day of the voyage, the captain",
    "The recipe my grandmother left me says",
    "In the year 2050, the cities of the world",
    "The detective looked at the letter and",
    "Every morning, before the sun rose, the baker",
]
THREADS = 2


@dataclass
class Run:
    tokens: int
    seconds: float
    first_token: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


def native_batched(model: object, context: object, clients: int, tokens: int) -> Run:
    """llama.cpp batched decoding: `clients` sequences, one llama_decode per step, greedy sampling."""
    from llama_cpp import llama_cpp as native

    from workers.llm_native import NativeContext, NativeModel

    assert isinstance(model, NativeModel) and isinstance(context, NativeContext)
    samplers = []
    for _ in range(clients):
        chain = native.llama_sampler_chain_init(native.llama_sampler_chain_default_params())
        native.llama_sampler_chain_add(chain, native.llama_sampler_init_greedy())
        samplers.append(chain)
    started = time.perf_counter()
    context.clear()
    outputs, positions = [], []
    for seq in range(clients):
        context.forget(seq)
        prompt = model.tokenize(PROMPTS[seq].encode(), add_bos=True, special=True)
        for pos, token in enumerate(prompt):
            index = context.add(token, pos, seq, pos == len(prompt) - 1)
        outputs.append(index)
        positions.append(len(prompt))
    first = 0.0
    for step in range(tokens):
        assert context.decode() == 0
        picked = [native.llama_sampler_sample(samplers[seq], context.ctx, outputs[seq]) for seq in range(clients)]
        if step == 0:
            first = time.perf_counter() - started
        context.clear()
        for seq, token in enumerate(picked):
            outputs[seq] = context.add(token, positions[seq], seq, True)
            positions[seq] += 1
    run = Run(tokens * clients, time.perf_counter() - started, [first] * clients)
    for chain in samplers:
        native.llama_sampler_free(chain)
    return run


def through_queue(url: str, clients: int, tokens: int) -> Run:
    counts = [0] * clients
    firsts = [0.0] * clients
    started = time.perf_counter()

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            body = {"prompt": PROMPTS[n], "max_tokens": tokens, "temperature": 0.0}
            job = http.post("/v1/jobs/completion", json=body).json()
            with connect_sse(http, "GET", f"/v1/jobs/{job['id']}/events") as source:
                for event in source.iter_sse():
                    if event.event == "token" and not firsts[n]:
                        firsts[n] = time.perf_counter() - started
                    elif event.event == "result":
                        counts[n] = event.json()["usage"]["completion_tokens"]
                    elif event.event == "done":
                        return

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Run(sum(counts), time.perf_counter() - started, firsts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--clients", default="1,2,4,8")
    args = parser.parse_args()
    levels = [int(n) for n in args.clients.split(",")]

    from contract.catalog import CATALOG
    from workers.llm_native import NativeContext, NativeModel
    from workers.weights import locate

    model = NativeModel(locate(CATALOG["gemma-3-270m"], Path("var/models")), n_gpu_layers=0)
    context = NativeContext(
        model, n_ctx_seq=2048, n_seq=max(levels), n_batch=512, n_threads=THREADS, n_threads_batch=THREADS
    )
    results: dict[int, tuple[list[Run], list[Run]]] = {n: ([], []) for n in levels}
    env = {"LLM_PARALLEL": str(max(levels)), "LLM_N_THREADS": str(THREADS)}
    with bench_stack("llm", **env) as stack:
        through_queue(stack.url, 1, 8)  # warm-up
        native_batched(model, context, 1, 8)
        for _ in range(args.runs):
            for n in levels:
                results[n][0].append(native_batched(model, context, n, args.tokens))
                results[n][1].append(through_queue(stack.url, n, args.tokens))

    print(
        f"gemma-3-270m Q4_K_M, {args.tokens} tokens per client, temperature 0, {THREADS} threads, "
        f"median of {args.runs} alternating runs"
    )
    print("| clients | llama.cpp batched tokens/s | speechq tokens/s | ratio | speechq TTFT p50 / p99 ms |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for n in levels:
        native_runs, queue_runs = results[n]
        native_rate = median([r.rate for r in native_runs])
        queue_rate = median([r.rate for r in queue_runs])
        ttfts = [t for r in queue_runs for t in r.first_token]
        print(
            f"| {n} | {native_rate:.1f} | {queue_rate:.1f} | **{queue_rate / native_rate:.2f}** | "
            f"{percentile(ttfts, 0.5) * 1000:.0f} / {percentile(ttfts, 0.99) * 1000:.0f} |"
        )


if __name__ == "__main__":
    main()
