"""One folder of short recordings, transcribed four ways; figure: audio seconds per wall-clock second, and the
ratio issue 26 asks for: `speechq transcribe` ÷ the in-process loop (target ≥ 1.3).

- `speechq transcribe` as it comes (files in flight to fill the worker's STT_PARALLEL, whose chunks decode
  together), and with `--concurrency 2` (its old default), against the default `speechq up` (one worker
  serving every queue, nothing tuned);
- a plain in-process faster-whisper loop over the same files (the same model, int8, 2 threads);
- the openai-whisper CLI (`whisper FILES --model tiny.en.pt`) on the same model size, converted from
  the same weights. Every path writes plain-text transcripts. Rounds alternate; figures are medians.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.harness import median
from tests.audio import DISTINCT_SENTENCES, encode, speak
from tests.stack import ROOT, SPEECHQ, start_up, up_env, wait_until

FILES = 40


def make_folder(folder: Path) -> float:
    """FILES clips of 3–10 s (one or two distinct sentences) in two subfolders; returns the total audio seconds."""
    voiced = [speak(text) for text in DISTINCT_SENTENCES]
    rate = voiced[0][1]
    total = 0.0
    for n in range(FILES):
        pcm = np.concatenate([voiced[(n + i) % len(voiced)][0] for i in range(1 + n % 2)])
        path = folder / f"part{n % 2}" / f"clip{n:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(pcm, rate))
        total += pcm.size / rate
    return total


def cli(url: str, folder: Path, out: Path, concurrency: int | None = None) -> float:
    started = time.perf_counter()
    argv = [*SPEECHQ, "transcribe", str(folder), "--out", str(out), "--format", "txt", "--force", "--server", url]
    argv += ["--concurrency", str(concurrency)] if concurrency else []
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - started


def in_process(folder: Path) -> float:
    from faster_whisper import WhisperModel

    from contract.catalog import CATALOG
    from media.audio import decode
    from workers.weights import locate

    path = locate(CATALOG["whisper-tiny.en"], ROOT / "var" / "models")
    model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=2)
    started = time.perf_counter()
    for source in sorted(folder.rglob("*.wav")):
        pcm = decode(source.read_bytes(), max_seconds=3600, time_limit=120)
        segments, _ = model.transcribe(pcm, beam_size=1)
        source.with_suffix(".fw.txt").write_text(" ".join(s.text.strip() for s in segments))
    return time.perf_counter() - started


def openai_whisper_cli(folder: Path, out: Path) -> float | None:
    from contract.catalog import CATALOG
    from workers.openai_whisper import find_checkpoint
    from workers.weights import locate

    whisper = Path(sys.executable).with_name("whisper")
    if not whisper.exists() or shutil.which("ffmpeg") is None:  # the whisper CLI decodes with ffmpeg
        return None
    models = ROOT / "var" / "models"
    checkpoint = find_checkpoint("whisper-tiny.en", locate(CATALOG["whisper-tiny.en"], models), models)
    files = [str(p) for p in sorted(folder.rglob("*.wav"))]
    argv = [str(whisper), *files, "--model", str(checkpoint), "--language", "en", "--fp16", "False"]
    argv += ["--device", "cpu", "--threads", "2", "--output_format", "txt", "--output_dir", str(out)]
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    written = list(out.glob("*.txt"))
    assert len(written) == len(files), "the whisper CLI skipped files (it reports errors and goes on)"
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="speechq-batch-") as tmp:
        folder, out = Path(tmp) / "audio", Path(tmp) / "out"
        audio = make_folder(folder)
        times: dict[str, list[float]] = {}
        env = up_env(Path(tmp) / "var", CONSOLE_PORT="0", LOG_LEVEL="WARNING")
        env.pop("LLM_N_THREADS")  # as `make run` has it: unset
        process, url = start_up(env, Path(tmp), "--no-flower")
        try:
            wait_until(lambda: httpx.get(f"{url}/ready", timeout=2).status_code == 200, timeout=300, what="ready")
            cli(url, folder, out)  # warm-up
            for _ in range(args.rounds):
                times.setdefault("`speechq transcribe`", []).append(cli(url, folder, out))
                times.setdefault("`speechq transcribe --concurrency 2`", []).append(cli(url, folder, out, 2))
                times.setdefault("faster-whisper in-process loop", []).append(in_process(folder))
                reference = openai_whisper_cli(folder, out / "ow")
                if reference is not None:
                    times.setdefault("openai-whisper CLI (PyTorch, fp32)", []).append(reference)
        finally:
            process.stop(timeout=60)
    if "openai-whisper CLI (PyTorch, fp32)" not in times:
        print("openai-whisper CLI: skipped (needs the `openai-whisper` extra and a system ffmpeg)")
    print(f"{FILES} files, {audio / 60:.1f} min of audio; whisper tiny.en, 2 threads, CPU; medians of {args.rounds}")
    print("| path | wall s | audio s per wall s |")
    print("| --- | ---: | ---: |")
    for name, values in times.items():
        print(f"| {name} | {median(values):.1f} | {audio / median(values):.1f} |")
    queue = median(times["`speechq transcribe`"])
    print(f"ratio, speechq transcribe ÷ in-process loop: {median(times['faster-whisper in-process loop']) / queue:.2f}")


if __name__ == "__main__":
    main()
