"""A worker's start-up: llama.cpp before PyAV (the CUDA crash), and a worker that dies says why."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cli.embedded_redis import EmbeddedRedis
from cli.stack import exit_reason
from tests.stack import ROOT, SPEECHQ, Process, base_env, wait_until


def first_import_lines(stderr: str, *modules: str) -> dict[str, int]:
    """The line of `python -X importtime` output where each module (or a submodule of it) first finished."""
    seen: dict[str, int] = {}
    for number, line in enumerate(stderr.splitlines()):
        match = re.match(r"import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", line)
        if match:
            top = match.group(1).split(".")[0]
            if top in modules and top not in seen:
                seen[top] = number
    return seen


def test_a_worker_serving_llm_loads_llama_cpp_before_pyav(tmp_path: Path) -> None:
    """The real `speechq worker --queues llm,stt,tts`, traced by the interpreter itself: fails if any import
    path brings PyAV (FFmpeg) in before llama.cpp. (It is also asked for more threads than there are
    cores, and must say so.)"""
    cores = os.cpu_count() or 1
    with EmbeddedRedis(tmp_path / "valkey") as redis:
        env = base_env(redis.url, tmp_path, STT_N_THREADS=str(cores + 1))  # the worker says it is too many
        argv = [sys.executable, "-X", "importtime", *SPEECHQ[1:], "worker", "--queues", "llm,stt,tts"]
        worker = Process("worker-importtime", argv, env, tmp_path)
        try:
            wait_until(lambda: "serving queues" in worker.log() or not worker.alive(), timeout=120, what="the worker")
            assert worker.alive(), worker.log()[-3000:]
        finally:
            worker.stop()
    assert f"STT_N_THREADS={cores + 1} asks for more threads than this machine's {cores} cores" in worker.log()
    order = first_import_lines(worker.log(), "llama_cpp", "av")
    assert set(order) == {"llama_cpp", "av"}, "the worker should import both (it serves llm and decodes audio)"
    assert order["llama_cpp"] < order["av"], "PyAV was imported before llama.cpp"


def test_prepare_worker_refuses_a_process_that_loaded_pyav_first() -> None:
    code = "import av; from workers.startup import prepare_worker; prepare_worker(['llm'])"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "PyAV (FFmpeg) was imported before llama.cpp" in done.stderr
    ok = "from workers.startup import prepare_worker; prepare_worker(['llm']); import av; print('ok')"
    done = subprocess.run([sys.executable, "-c", ok], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize(
    ("code", "words"),
    [(0, "exited with status 0"), (1, "exited with status 1"), (-11, "was killed by SIGSEGV (signal 11)")],
)
def test_exit_reasons_name_the_signal(code: int, words: str) -> None:
    assert exit_reason(code) == words


def children_of(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append((int(entry.name), cmdline))
    return found


def test_a_worker_that_crashes_is_reported_with_its_signal_and_traceback(tmp_path: Path) -> None:
    """`speechq worker` supervising a model worker and a dialogue worker: the model worker dies of SIGSEGV;
    its own log shows where (faulthandler), the supervisor says which signal, and stops the rest."""
    with EmbeddedRedis(tmp_path / "valkey") as redis:
        env = base_env(redis.url, tmp_path, LOG_FORMAT="text")
        supervisor = Process("supervisor", [*SPEECHQ, "worker", "--queues", "llm,dialogue"], env, tmp_path)
        try:
            wait_until(lambda: supervisor.log().count("serving queues") >= 2, timeout=120, what="both workers")
            [model_worker] = [pid for pid, argv in children_of(supervisor.pid) if "--queues llm" in argv]
            os.kill(model_worker, signal.SIGSEGV)
            status = supervisor.process.wait(60)
        finally:
            supervisor.stop()
    log = supervisor.log()
    assert "Fatal Python error: Segmentation fault" in log
    assert "worker was killed by SIGSEGV (signal 11)" in log
    assert status == 1
