"""Speech to text: real-time factor through the queue ÷ faster-whisper in-process, on the same files.

Test speech is synthesized (hibari-tts) from known sentences into clips of 10–30 s. Both sides decode
with the same code (`media.audio.decode`) and run whisper-tiny.en int8 with the same thread count;
runs alternate per file. Speed ratio = in-process seconds ÷ queue seconds (1.0 = no overhead).

    python -m bench.transcription [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx
import numpy as np
from httpx_sse import connect_sse

from bench.harness import bench_stack, median
from tests.audio import SENTENCES, encode, speak

CLIPS = {"short": 2, "medium": 5, "long": 10}  # sentences repeated per clip


def clips() -> dict[str, tuple[bytes, float]]:
    voiced = [speak(text) for text in SENTENCES.values()]
    rate = voiced[0][1]
    out = {}
    for name, count in CLIPS.items():
        pcm = np.concatenate([voiced[i % len(voiced)][0] for i in range(count)])
        out[name] = (encode(pcm, rate), pcm.size / rate)
    return out


def in_process(files: dict[str, tuple[bytes, float]], rounds: int) -> dict[str, list[float]]:
    from faster_whisper import WhisperModel

    from contract.catalog import CATALOG
    from media.audio import decode
    from workers.weights import locate

    path = locate(CATALOG["whisper-tiny.en"], Path("var/models"))
    model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=2)
    times: dict[str, list[float]] = {name: [] for name in files}
    for _ in range(rounds):
        for name, (data, _) in files.items():
            started = time.perf_counter()
            pcm = decode(data, max_seconds=3600, time_limit=120)
            segments, _info = model.transcribe(pcm, temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), beam_size=1)
            list(segments)
            times[name].append(time.perf_counter() - started)
    return times


def openai_whisper(files: dict[str, tuple[bytes, float]], rounds: int) -> dict[str, list[float]] | None:
    """The same files through openai-whisper (PyTorch, CPU, 2 threads) on tiny.en converted from the same weights."""
    try:
        import torch
        import whisper
    except ImportError:
        return None
    from contract.catalog import CATALOG
    from media.audio import decode
    from workers.openai_whisper import find_checkpoint
    from workers.weights import locate

    torch.set_num_threads(2)
    path = locate(CATALOG["whisper-tiny.en"], Path("var/models"))
    model = whisper.load_model(str(find_checkpoint("whisper-tiny.en", path, Path("var/models"))), device="cpu")
    times: dict[str, list[float]] = {name: [] for name in files}
    for _ in range(rounds):
        for name, (data, _) in files.items():
            started = time.perf_counter()
            model.transcribe(decode(data, max_seconds=3600, time_limit=120), fp16=False, language="en")
            times[name].append(time.perf_counter() - started)
    return times


def through_queue(url: str, files: dict[str, tuple[bytes, float]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in files}
    with httpx.Client(base_url=url, timeout=300) as client:
        for _ in range(rounds):
            for name, (data, _) in files.items():
                started = time.perf_counter()
                job = client.post("/v1/jobs/transcribe", files={"file": (f"{name}.wav", data)}).json()
                with connect_sse(client, "GET", f"/v1/jobs/{job['id']}/events") as source:
                    for event in source.iter_sse():
                        if event.event == "done":
                            assert event.json()["status"] == "succeeded"
                            break
                times[name].append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    files = clips()
    with bench_stack(queues="stt", STT_N_THREADS="2", LOG_LEVEL="WARNING") as stack:
        through_queue(stack.url, {"short": files["short"]}, 1)  # warm-up
        queued: dict[str, list[float]] = {name: [] for name in files}
        local: dict[str, list[float]] = {name: [] for name in files}
        for _ in range(args.rounds):  # alternate the two sides so the machine's noise falls on both
            for name, seconds in in_process(files, 1).items():
                local[name] += seconds
            for name, seconds in through_queue(stack.url, files, 1).items():
                queued[name] += seconds

    print(f"whisper-tiny.en int8, 2 threads, CPU; median of {args.rounds} alternating rounds")
    print("| clip | audio s | in-process RTF | queue + SSE RTF | speed ratio (in-process ÷ queue) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, (_, duration) in files.items():
        local_s, queue_s = median(local[name]), median(queued[name])
        rtf = f"{local_s / duration:.4f} | {queue_s / duration:.4f}"
        print(f"| {name} | {duration:.1f} | {rtf} | {local_s / queue_s:.3f} |")
    reference = openai_whisper(files, args.rounds)
    total_audio = sum(d for _, d in files.values())
    total_local = sum(median(v) for v in local.values())
    total_queue = sum(median(v) for v in queued.values())
    print(
        f"| all | {total_audio:.1f} | {total_local / total_audio:.4f} | {total_queue / total_audio:.4f} "
        f"| {total_local / total_queue:.3f} |"
    )

    if reference is None:
        print("openai-whisper: not installed (extra `openai-whisper`); comparison skipped")
        return
    total_reference = sum(median(v) for v in reference.values())
    print()
    print("| path (whisper tiny.en, 2 threads) | RTF | speed vs openai-whisper |")
    print("| --- | ---: | ---: |")
    print(f"| openai-whisper in-process (PyTorch fp32) | {total_reference / total_audio:.4f} | 1.00 |")
    print(
        f"| faster-whisper in-process (int8) | {total_local / total_audio:.4f} | {total_reference / total_local:.2f}× |"
    )
    queue_speed = total_reference / total_queue
    print(f"| faster-whisper through queue + SSE | {total_queue / total_audio:.4f} | {queue_speed:.2f}× |")


if __name__ == "__main__":
    main()
