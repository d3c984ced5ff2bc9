"""Spoken dialogue: time to the first audio chunk, pipelined against sequential, on the same input.

- pipelined: one `dialogue` job (`POST /v1/jobs/dialogue`): each sentence of the answer is sent to
  synthesis as soon as the model has finished it;
- sequential: the same three stages one after the other through the same queues: a `transcribe` job,
  then a `chat` job with the same messages (so the same answer, at temperature 0), then one `synthesize`
  job for the whole answer.
Both are timed from the request to the first `audio_chunk` event. Rounds alternate; figures are medians.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import httpx
from httpx_sse import connect_sse

from bench.harness import bench_stack, median
from tests.audio import encode, speak

QUESTION = "Tell me about the city of Paris."
INSTRUCTIONS = "You are a tour guide. Answer in four or five sentences."
CHAT = {"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 160, "seed": 1}


def events(client: httpx.Client, job_id: str) -> Any:
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events") as source:
        yield from source.iter_sse()


def finish(client: httpx.Client, job_id: str) -> dict[str, Any]:
    for event in events(client, job_id):
        if event.event == "done":
            assert event.json()["status"] == "succeeded", client.get(f"/v1/jobs/{job_id}").text
    return dict(client.get(f"/v1/jobs/{job_id}").json()["result"])


def pipelined(client: httpx.Client, audio: bytes) -> tuple[float, float, str]:
    started = time.perf_counter()
    fields = {"instructions": INSTRUCTIONS, "generation_config": json.dumps(CHAT)}
    job = client.post("/v1/jobs/dialogue", files={"file": ("q.wav", audio)}, data=fields).json()["id"]
    first: float | None = None
    for event in events(client, job):
        if event.event == "audio_chunk" and first is None:
            first = time.perf_counter() - started
    total = time.perf_counter() - started
    result = client.get(f"/v1/jobs/{job}").json()["result"]
    assert first is not None
    return first, total, str(result["response_text"])


def sequential(client: httpx.Client, audio: bytes) -> tuple[float, float, str]:
    started = time.perf_counter()
    stt = client.post("/v1/jobs/transcribe", files={"file": ("q.wav", audio)}).json()["id"]
    transcript = finish(client, stt)["text"].strip()
    messages = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": transcript}]
    chat = client.post("/v1/jobs/chat", json={"messages": messages, **CHAT}).json()["id"]
    answer = finish(client, chat)["text"]
    tts = client.post("/v1/jobs/synthesize", json={"text": answer}).json()["id"]
    first: float | None = None
    for event in events(client, tts):
        if event.event == "audio_chunk" and first is None:
            first = time.perf_counter() - started
    assert first is not None
    return first, time.perf_counter() - started, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    pcm, rate = speak(QUESTION)
    audio = encode(pcm, rate, "wav")
    results: dict[str, list[tuple[float, float, str]]] = {"pipelined": [], "sequential": []}
    queues = "llm,stt,tts,dialogue"
    with bench_stack(queues=queues, LOG_LEVEL="WARNING") as stack, httpx.Client(base_url=stack.url, timeout=300) as c:
        pipelined(c, audio)  # warm-up: every model loaded, every path taken once
        sequential(c, audio)
        for _ in range(args.rounds):
            results["pipelined"].append(pipelined(c, audio))
            results["sequential"].append(sequential(c, audio))

    answer = results["pipelined"][-1][2]
    same = all(r[2] == answer for rs in results.values() for r in rs)
    print(f"smollm2-135m-instruct (temperature 0), whisper-tiny.en, hibari; medians of {args.rounds} rounds")
    print(f"answer ({len(answer.split())} words, identical on both paths: {same}): {answer[:120]!r}…")
    print("| path | first audio chunk | whole answer spoken |")
    print("| --- | ---: | ---: |")
    firsts = {}
    for name, rows in results.items():
        firsts[name] = median([r[0] for r in rows])
        print(f"| {name} | {firsts[name]:.2f} s | {median([r[1] for r in rows]):.2f} s |")
    ratio = firsts["pipelined"] / firsts["sequential"]
    print(f"time to first audio, pipelined ÷ sequential: **{ratio:.2f}** (target ≤ 0.6)")


if __name__ == "__main__":
    main()
