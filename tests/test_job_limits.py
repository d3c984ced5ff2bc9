"""No job outlives its cancel or its deadline, no tenant's job holds up another's, and no worker outlives
the process that supervises it (issue 13, H1).

The request below once wedged the LLM worker for every tenant: its text never became whole UTF-8, so
nothing was emitted, and cancel and the time limit were only checked when text was.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.stack import SPEECHQ, Process, base_env, private_stack, start_api, wait_for_worker, wait_until

ALPHA, BETA = "sk-alpha-limits-0123456789", "sk-beta-limits-9876543210"
# Byte for byte as sent: a surrogate pair (U+3D5B3, unassigned) and sampling bounds at float extremes.
H1 = (
    b'{"prompt":"\\ud8b5\\uddb3","max_tokens":2568,"temperature":0.7,"top_p":9.2e-196,"top_k":40,'
    b'"repeat_penalty":1.1,"seed":74535,"min_p":1.175494351e-38,"typical_p":1.04e-146}'
)
TIME_LIMIT = 6


def status(client: httpx.Client, job_id: str) -> str:
    return str(client.get(f"/v1/jobs/{job_id}").json()["status"])


def submit_h1(client: httpx.Client) -> str:
    response = client.post("/v1/jobs/generate", content=H1, headers={"Content-Type": "application/json"})
    assert response.status_code == 202, response.text
    job_id = str(response.json()["id"])
    wait_until(lambda: status(client, job_id) == "running", timeout=30, what="the H1 job to run")
    return job_id


def test_the_h1_request_ends_on_cancel_and_on_its_deadline_while_another_tenant_is_served(tmp_path: Path) -> None:
    settings = {
        "API_KEY_ENABLED": "true",
        "API_KEYS": f"{ALPHA},{BETA}",
        "LLM_N_CTX": "4096",
        "LLM_PARALLEL": "2",
        "TASK_TIME_LIMIT_SECONDS": str(TIME_LIMIT),
    }
    with (
        private_stack(tmp_path, "llm", **settings) as stack,
        httpx.Client(base_url=stack.url, headers={"X-API-Key": ALPHA}, timeout=30) as alpha,
        httpx.Client(base_url=stack.url, headers={"X-API-Key": BETA}, timeout=30) as beta,
    ):
        runaway = submit_h1(alpha)
        started = time.monotonic()

        # Another tenant's job runs to the end meanwhile.
        other = beta.post("/v1/jobs/generate", json={"prompt": "Hi", "max_tokens": 2, "temperature": 0}).json()["id"]
        wait_until(lambda: status(beta, other) == "succeeded", timeout=TIME_LIMIT, what="the other tenant's job")
        assert status(alpha, runaway) == "running"

        # The time limit ends it, emitting or not.
        wait_until(lambda: status(alpha, runaway) == "failed", timeout=TIME_LIMIT + 10, what="the deadline")
        assert time.monotonic() - started < TIME_LIMIT + 3
        job = alpha.get(f"/v1/jobs/{runaway}").json()
        assert job["error"]["type"] == "timeout"

        # A cancel ends it within a second.
        cancelled = submit_h1(alpha)
        asked = time.monotonic()
        assert alpha.delete(f"/v1/jobs/{cancelled}").status_code == 202
        wait_until(lambda: status(alpha, cancelled) == "cancelled", timeout=5, interval=0.05, what="the cancel")
        assert time.monotonic() - asked < 1.0

        # And the worker is free for the next job.
        after = beta.post("/v1/jobs/generate", json={"prompt": "Hi", "max_tokens": 2, "temperature": 0}).json()["id"]
        wait_until(lambda: status(beta, after) == "succeeded", timeout=30, what="a job after the runaway ones")


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_no_worker_outlives_its_supervisor(private_redis: str, tmp_path: Path, how: signal.Signals) -> None:
    """`speechq worker` with a model queue and `dialogue` supervises two processes; stopping it (SIGTERM)
    or killing it outright (SIGKILL, when nothing can run its shutdown) leaves neither behind."""
    env = base_env(private_redis, tmp_path, LLM_PRELOAD="false")
    supervisor = Process("workers", [*SPEECHQ, "worker", "--queues", "llm,dialogue"], env, tmp_path)
    try:
        workers = wait_until(
            lambda: kids if len(kids := children(supervisor.pid)) == 2 else None, timeout=30, what="2 workers"
        )
        os.kill(supervisor.pid, how)
        wait_until(lambda: not any(alive(pid) for pid in workers), timeout=20, what="the workers to stop")
    finally:
        supervisor.stop(timeout=5)


def test_a_worker_whose_engine_gets_stuck_fails_the_job_and_is_started_again(
    private_redis: str, tmp_path: Path
) -> None:
    """LLM_STALL_SECONDS far below a prompt's prefill step stands in for a llama.cpp call that never
    returns: the job fails as `engine_stalled`, the worker exits with status 75, and `speechq worker`
    (supervising the llm and dialogue processes) starts a fresh one instead of stopping."""
    env = base_env(private_redis, tmp_path, LLM_STALL_SECONDS="0.05", LLM_N_THREADS="1")
    supervisor = Process("workers", [*SPEECHQ, "worker", "--queues", "llm,dialogue"], env, tmp_path)
    api, url = start_api(env, tmp_path)
    try:
        wait_for_worker(url, supervisor)
        first = children(supervisor.pid)
        with httpx.Client(base_url=url, timeout=30) as client:
            prompt = "The river runs past the old mill and on to the sea. " * 110  # ~1,300 tokens of prefill
            job = client.post("/v1/jobs/completion", json={"prompt": prompt, "max_tokens": 8}).json()["id"]
            wait_until(lambda: status(client, job) == "failed", timeout=60, what="the stuck job to fail")
            assert client.get(f"/v1/jobs/{job}").json()["error"]["type"] == "engine_stalled"
        replaced = wait_until(
            lambda: now if len(now := children(supervisor.pid)) == 2 and now != first else None,
            timeout=60,
            what="a fresh llm worker",
        )
        assert len(replaced & first) == 1  # the dialogue worker stayed; the llm worker is new
        assert supervisor.alive()
        assert "asked to be restarted" in supervisor.log()
    finally:
        api.stop()
        supervisor.stop(timeout=30)
