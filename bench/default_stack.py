"""The default `speechq up` (one worker serving every queue, nothing tuned) against the engines in-process
(issue 26): what a person gets from `make run`, not a benchmark stack set up for the occasion.

- generation: one 128-token greedy completion of gemma-3-270m through `/v1/completions`, in tokens per
  second, ÷ llama-cpp-python in-process at its best thread count on this machine (1 to all cores);
- transcription: a 100 s recording of distinct sentences (no repetition, so that no segment falls back to
  sampling and the work is the same every run) through `/v1/audio/transcriptions`, where the worker takes
  its batched decoder (steps of VAD chunks, `workers/stt_batch.py`), ÷ faster-whisper's sequential
  `WhisperModel.transcribe` in-process (same model, all cores, beam 1, the same temperature ladder), in
  seconds.

Runs alternate between the two sides; medians are printed with the ratios (≥ 1: the queue is as fast).

    python -m bench.default_stack [--rounds 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.harness import median
from tests.audio import DISTINCT_SENTENCES, encode, speak
from tests.stack import start_up, up_env, wait_until
from workers.cores import usable_cores

PROMPT = "Once upon a time, in a small village by the sea, there lived"
MODEL_DIR = Path("var/models")


def recording(seconds: float = 100.0) -> bytes:
    voiced = [speak(text) for text in DISTINCT_SENTENCES]
    rate = voiced[0][1]
    pcm = np.concatenate([pcm for pcm, _ in voiced])
    if pcm.size < seconds * rate:
        raise SystemExit(f"the sentences make only {pcm.size / rate:.0f} s of speech; {seconds:.0f} s are needed")
    return encode(pcm[: int(seconds * rate)], rate)


class InProcess:
    def __init__(self) -> None:
        from faster_whisper import WhisperModel
        from llama_cpp import Llama

        from contract.catalog import CATALOG
        from workers.weights import locate

        self.llama_path = str(locate(CATALOG["gemma-3-270m"], MODEL_DIR))
        self.llamas = {
            threads: Llama(self.llama_path, n_threads=threads, n_threads_batch=threads, n_ctx=2048, verbose=False)
            for threads in range(1, usable_cores() + 1)
        }
        self.whisper = WhisperModel(
            str(locate(CATALOG["whisper-tiny.en"], MODEL_DIR)), device="cpu", compute_type="int8", cpu_threads=0
        )

    def tokens_per_second(self, threads: int) -> float:
        started = time.perf_counter()
        out = self.llamas[threads].create_completion(PROMPT, max_tokens=128, temperature=0, repeat_penalty=1.0)
        assert isinstance(out, dict), "not streamed"
        return float(out["usage"]["completion_tokens"]) / (time.perf_counter() - started)

    def transcribe_seconds(self, wav: bytes) -> float:
        from media.audio import decode

        started = time.perf_counter()
        pcm = decode(wav, max_seconds=3600, time_limit=120)
        segments, _ = self.whisper.transcribe(pcm, beam_size=1, temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0))
        list(segments)
        return time.perf_counter() - started


def queued_tokens_per_second(client: httpx.Client) -> float:
    started = time.perf_counter()
    body = {"model": "gemma-3-270m", "prompt": PROMPT, "max_tokens": 128, "temperature": 0, "repeat_penalty": 1.0}
    answer = client.post("/v1/completions", json=body).json()
    return float(answer["usage"]["completion_tokens"]) / (time.perf_counter() - started)


def queued_transcribe_seconds(client: httpx.Client, wav: bytes) -> float:
    started = time.perf_counter()
    answer = client.post(
        "/v1/audio/transcriptions", files={"file": ("a.wav", wav, "audio/wav")}, data={"model": "whisper-tiny.en"}
    )
    answer.raise_for_status()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    wav = recording()
    local = InProcess()
    # The best thread count in-process, chosen on a first pass, then measured with the rest.
    best = max(local.llamas, key=lambda threads: median([local.tokens_per_second(threads) for _ in range(2)]))
    with tempfile.TemporaryDirectory(prefix="speechq-bench-") as tmp:
        env = up_env(Path(tmp) / "var", CONSOLE_PORT="0")
        env.pop("LLM_N_THREADS")  # as `make run` has it: unset
        process, url = start_up(env, Path(tmp), "--no-flower")
        try:
            wait_until(lambda: httpx.get(f"{url}/ready", timeout=2).status_code == 200, timeout=300, what="ready")
            tokens: dict[str, list[float]] = {"queue": [], "local": []}
            seconds: dict[str, list[float]] = {"queue": [], "local": []}
            with httpx.Client(base_url=url, timeout=300) as client:
                queued_tokens_per_second(client)  # warm: the first request pays for nothing else
                queued_transcribe_seconds(client, wav)
                for _ in range(rounds):
                    tokens["queue"].append(queued_tokens_per_second(client))
                    tokens["local"].append(local.tokens_per_second(best))
                    seconds["queue"].append(queued_transcribe_seconds(client, wav))
                    seconds["local"].append(local.transcribe_seconds(wav))
        finally:
            process.stop(timeout=60)
    generation = median(tokens["queue"]) / median(tokens["local"])
    transcription = median(seconds["local"]) / median(seconds["queue"])
    print(f"cores: {usable_cores()}; rounds: {rounds}; in-process llama.cpp's best thread count: {best}")
    print(
        f"generation, 128 tokens: queue {median(tokens['queue']):.1f} tok/s, in-process {median(tokens['local']):.1f}"
        f" tok/s -> ratio {generation:.2f}"
    )
    print(
        f"transcription, 100 s: queue {median(seconds['queue']):.2f} s, in-process {median(seconds['local']):.2f} s"
        f" -> ratio {transcription:.2f}"
    )


if __name__ == "__main__":
    main()
