"""Text to speech through the queue against the same engine in-process.

For each local engine and three texts (1, 4 and 12 sentences), measure the time to the first audio chunk
and the real-time factor (synthesis seconds ÷ audio seconds):
- in-process: the worker's own handler (`run_tts_job`: engine → loudness → encoder) called directly,
  with events recorded in memory instead of Redis;
- through the queue: `POST /v1/jobs/synthesize`, then the job's SSE events (first `audio_chunk`, `done`);
- OpenAI `POST /v1/audio/speech` streaming: time to the first audio byte.
Rounds alternate the sides so the machine's noise falls on both; figures are medians.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx
from httpx_sse import connect_sse
from pydantic import BaseModel

from bench.harness import bench_stack, median
from contract.jobs import EventType
from tests.audio import SENTENCES

_LINES = list(SENTENCES.values())
TEXTS = {
    "1 sentence": _LINES[1],
    "4 sentences": " ".join(_LINES),
    "12 sentences": " ".join(_LINES * 3),
}
ENGINES = ("hibari", "piper-en_US-joe-medium")
FORMAT = "mp3"


class MemoryRun:
    """A `JobContext` in place of the worker's `JobExecution`: records when the first audio chunk was ready."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first_chunk: float | None = None

    def emit(self, event: EventType, data: BaseModel) -> None:  # noqa: ARG002 - only the time is recorded
        if event == EventType.audio_chunk and self.first_chunk is None:
            self.first_chunk = time.perf_counter() - self.started

    def check(self) -> None:
        """Never stops: nobody cancels a benchmark run."""


def in_process(models: Any, engine: str, text: str) -> tuple[float, float, float]:
    from contract.jobs import JobKind, JobRecord, JobStatus
    from workers.handlers import run_tts_job

    request = {"text": text, "model": engine, "response_format": FORMAT, "sample_rate": None}
    with models.tts(engine) as voice:
        request["sample_rate"] = voice.sample_rate
    job = JobRecord(id="bench", kind=JobKind.synthesize, status=JobStatus.running, owner="bench", request=request)
    run = MemoryRun()
    result = run_tts_job(job, run, models, outputs=lambda _id, _data: None)
    total = time.perf_counter() - run.started
    assert run.first_chunk is not None
    return run.first_chunk, total, result.duration


def through_queue(client: httpx.Client, engine: str, text: str) -> tuple[float, float, float]:
    started = time.perf_counter()
    job = client.post("/v1/jobs/synthesize", json={"text": text, "model": engine, "response_format": FORMAT})
    job.raise_for_status()
    first: float | None = None
    with connect_sse(client, "GET", f"/v1/jobs/{job.json()['id']}/events") as source:
        for event in source.iter_sse():
            if event.event == "audio_chunk" and first is None:
                first = time.perf_counter() - started
            if event.event == "done":
                assert event.json()["status"] == "succeeded"
                break
    total = time.perf_counter() - started
    duration = client.get(f"/v1/jobs/{job.json()['id']}").json()["result"]["duration"]
    assert first is not None
    return first, total, float(duration)


def openai_first_byte(client: httpx.Client, engine: str, text: str) -> float:
    started = time.perf_counter()
    body = {"model": engine, "input": text, "voice": "alloy", "response_format": FORMAT}
    with client.stream("POST", "/v1/audio/speech", json=body) as response:
        response.raise_for_status()
        first: float | None = None
        for _ in response.iter_raw():  # read it all: the job ends before the next request
            if first is None:
                first = time.perf_counter() - started
    assert first is not None
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from config.settings import load_settings
    from workers.models import ModelCache

    models = ModelCache(load_settings(tts_n_threads=1))
    samples: dict[tuple[str, str, str], list[tuple[float, ...]]] = {}
    with bench_stack(queues="tts", LOG_LEVEL="WARNING") as stack, httpx.Client(base_url=stack.url, timeout=300) as c:
        for engine in ENGINES:  # warm-up: load both engines on both sides
            in_process(models, engine, "Warm up.")
            through_queue(c, engine, "Warm up.")
        for _ in range(args.rounds):
            for engine in ENGINES:
                for name, text in TEXTS.items():
                    samples.setdefault((engine, name, "local"), []).append(in_process(models, engine, text))
                    samples.setdefault((engine, name, "queue"), []).append(through_queue(c, engine, text))
                    samples.setdefault((engine, name, "openai"), []).append((openai_first_byte(c, engine, text),))

    print(f"{FORMAT} output, onnxruntime 1 thread, CPU; medians of {args.rounds} alternating rounds")
    print(
        "| engine | text | audio s | first chunk in-process | first chunk queue + SSE | first byte /v1/audio/speech "
        "| RTF in-process | RTF queue | RTF ratio (in-process ÷ queue) |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for engine in ENGINES:
        for name in TEXTS:
            local = samples[(engine, name, "local")]
            queued = samples[(engine, name, "queue")]
            audio = median([s[2] for s in local])
            local_first, queue_first = median([s[0] for s in local]), median([s[0] for s in queued])
            openai_first = median([s[0] for s in samples[(engine, name, "openai")]])
            local_rtf = median([s[1] / s[2] for s in local])
            queue_rtf = median([s[1] / s[2] for s in queued])
            print(
                f"| {engine} | {name} | {audio:.1f} | {local_first * 1000:.0f} ms | {queue_first * 1000:.0f} ms "
                f"| {openai_first * 1000:.0f} ms | {local_rtf:.4f} | {queue_rtf:.4f} | {local_rtf / queue_rtf:.3f} |"
            )


if __name__ == "__main__":
    main()
