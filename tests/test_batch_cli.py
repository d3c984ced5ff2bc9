"""`speechq transcribe` over a nested folder of synthesized recordings, against the test stack's API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import srt
import webvtt

from tests.audio import encode, speak, wer
from tests.conftest import Stack
from tests.stack import ROOT, SPEECHQ, wait_until

LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please send the quarterly report to the finance team by Friday.",
    "The weather today will be sunny with a light breeze from the west.",
    "She borrowed three books from the library and returned them on Monday.",
    "Our train leaves the station at half past seven in the evening.",
    "The kitchen needs new lights before the guests arrive next week.",
    "He planted tomatoes and beans in the garden behind the house.",
]
FORMATS = "txt,srt,vtt,json,tsv"


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[Path, str]]:
    """22 recordings in a nested tree (wav, mp3, flac and one without an extension), a broken file and a note."""
    root = tmp_path_factory.mktemp("archive")
    spoken: dict[Path, str] = {}
    folders = {"wav": root / "day1" / "morning", "mp3": root / "day1" / "afternoon", "flac": root / "day2"}
    for fmt, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        for n, line in enumerate(LINES):
            pcm, rate = speak(line)
            path = folder / f"take{n:02d}.{fmt}"
            path.write_bytes(encode(pcm, rate, fmt))
            spoken[path] = line
    memo = root / "day2" / "memo"
    memo.write_bytes(encode(*speak("This memo has no extension at all."), "wav"))
    spoken[memo] = "This memo has no extension at all."
    (root / "day2" / "broken.mp3").write_bytes(os.urandom(6000))
    (root / "notes.txt").write_text("not audio\n")
    return root, spoken


def run_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, "COLUMNS": "200"}
    argv = [*SPEECHQ, "transcribe", *args, "--server", stack.url]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_folder_tree_is_transcribed_resumed_and_forced(
    stack: Stack, recordings: tuple[Path, dict[Path, str]], tmp_path: Path
) -> None:
    root, spoken = recordings
    out = tmp_path / "transcripts"
    done = run_cli(stack, str(root), "--out", str(out), "--format", FORMATS, "--concurrency", "2")
    assert done.returncode == 1, done.stdout + done.stderr  # one file is broken
    assert f"{len(spoken)} transcribed" in done.stdout and "1 failed" in done.stdout
    assert re.search(r"\d+\.\d s of audio per second", done.stdout), "the run's throughput is reported"
    assert "broken.mp3" in done.stdout and "unsupported_media_type" in done.stdout

    for source, line in spoken.items():
        base = out / source.relative_to(root).with_suffix("")
        text = base.with_name(base.name + ".txt").read_text()
        assert wer(line, text) <= 0.15, (source, text)
        subtitles = list(srt.parse(base.with_name(base.name + ".srt").read_text()))
        assert subtitles and subtitles[0].start.total_seconds() >= 0
        captions = webvtt.from_buffer(__import__("io").StringIO(base.with_name(base.name + ".vtt").read_text()))
        assert len(captions) >= 1
        result = json.loads(base.with_name(base.name + ".json").read_text())
        assert result["language"] == "en" and result["segments"]
        rows = base.with_name(base.name + ".tsv").read_text().splitlines()
        assert rows[0] == "start\tend\ttext" and len(rows[1].split("\t")) == 3
    assert not (out / "notes.txt").exists() and not list(out.rglob("*.partial"))

    again = run_cli(stack, str(root), "--out", str(out), "--format", FORMATS)
    assert "0 transcribed" in again.stdout and f"{len(spoken)} skipped" in again.stdout, again.stdout
    assert again.returncode == 1 and "broken.mp3" in again.stdout

    forced = run_cli(stack, str(root / "day1"), "--out", str(out / "day1"), "--format", "txt", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "14 transcribed" in forced.stdout and "0 skipped" in forced.stdout


def test_ctrl_c_cancels_outstanding_jobs_and_leaves_no_partial_file(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "long"
    folder.mkdir()
    passage = " ".join(LINES * 4)  # about 100 s each: several seconds to transcribe
    for n in range(4):
        pcm, rate = speak(passage)
        (folder / f"long{n}.wav").write_bytes(encode(pcm, rate, "wav"))
    out = tmp_path / "out"
    argv = [*SPEECHQ, "transcribe", str(folder), "--out", str(out), "--concurrency", "2", "--server", stack.url]
    process = subprocess.Popen(
        argv, cwd=ROOT, env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    with httpx.Client(base_url=stack.url, timeout=10) as client:

        def transcribing() -> bool:
            jobs = client.get("/v1/jobs", params={"kind": "transcribe", "status": "running"}).json()["data"]
            return bool(jobs)

        wait_until(transcribing, timeout=30, interval=0.05, what="a transcription in flight")
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 130, output
        assert "interrupted" in output and "0 job(s) cancelled" not in output, output

        def settled() -> bool:
            active = [
                job
                for status in ("queued", "running", "cancelling")
                for job in client.get("/v1/jobs", params={"kind": "transcribe", "status": status}).json()["data"]
            ]
            return not active

        wait_until(settled, timeout=30, what="the outstanding jobs to end")
        cancelled = client.get("/v1/jobs", params={"kind": "transcribe", "status": "cancelled"}).json()["data"]
        assert cancelled, "the job in flight was cancelled"
    assert not list(tmp_path.rglob("*.partial"))
    for written in out.rglob("*.txt") if out.exists() else []:
        assert written.read_text().strip(), "only whole files are written"
    time.sleep(0.1)
