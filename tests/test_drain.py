"""Draining a worker (issue 27): SIGTERM or `POST /v1/workers/{id}/drain` makes it take nothing new, finish what
it runs (or hand it back after WORKER_DRAIN_SECONDS, for another worker to take at once), and say so."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api.routes.models import public_worker_id
from cli.embedded_redis import EmbeddedRedis
from tests.stack import Process, base_env, free_port, start_api, start_worker, wait_for_worker, wait_until
from tests.test_batching import counting
from tests.test_jobs_api import submit, wait_done
from tests.test_recovery import wait_for_first_token


@dataclass
class Cluster:
    url: str
    env: dict[str, str]
    folder: Path
    workers: list[Process] = field(default_factory=list)

    def worker(self, **env: str) -> Process:
        """Start another `llm` worker (logs in a folder of its own) and wait until it serves."""
        folder = self.folder / f"worker{len(self.workers)}"
        folder.mkdir()
        process = start_worker({**self.env, **env}, folder, queues="llm")
        self.workers.append(process)
        wait_for_worker(self.url, process)
        count = len(self.workers)
        wait_until(lambda: len(httpx.get(f"{self.url}/v1/workers").json()["data"]) >= count, timeout=60)
        return process


@contextmanager
def cluster(folder: Path, **env: str) -> Iterator[Cluster]:
    """An embedded Valkey and an API; workers are started by the test. A lease of 2 s and a visibility timeout
    of 5 minutes: a job that comes back quickly came back through the drain, not through the broker's sweep."""
    with EmbeddedRedis(folder / "valkey") as redis:
        settings = base_env(
            redis.url,
            folder,
            LLM_PARALLEL="4",
            LLM_N_THREADS="1",
            JOB_LEASE_SECONDS="2",
            WORKER_HEARTBEAT_SECONDS="1",
            TASK_TIME_LIMIT_SECONDS="280",
            BROKER_VISIBILITY_TIMEOUT_SECONDS="300",
            **env,
        )
        api, url = start_api(settings, folder)
        stack = Cluster(url, settings, folder)
        try:
            yield stack
        finally:
            api.stop()
            for process in stack.workers:
                process.stop()


def workers(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {w["id"]: w for w in client.get("/v1/workers").json()["data"]}


def ran_on(job: dict[str, Any]) -> str:
    """The public id (as `GET /v1/workers` has it) of the worker that ran the job."""
    return public_worker_id(str(job["worker"]))


def test_sigterm_during_four_generations_finishes_them_and_the_queued_ones_go_elsewhere(tmp_path: Path) -> None:
    with cluster(tmp_path, WORKER_DRAIN_SECONDS="120") as stack, httpx.Client(base_url=stack.url, timeout=30) as c:
        first = stack.worker()
        (first_id,) = workers(c)
        running = [str(submit(c, "completion", **counting(1 + 100 * i, 300))["id"]) for i in range(4)]
        for job_id in running:
            wait_for_first_token(c, job_id)
        queued = [str(submit(c, "completion", **counting(7 + 100 * i, 8))["id"]) for i in range(4)]
        assert {c.get(f"/v1/jobs/{j}").json()["status"] for j in queued} == {"queued"}  # all 4 slots are busy
        first.process.send_signal(signal.SIGTERM)
        wait_until(lambda: workers(c)[first_id]["draining"], timeout=5, what="the worker to say it drains")
        # A replacement comes up (as an orchestrator's rolling update starts one): the queued jobs go to it
        # while the first worker still finishes its four.
        stack.worker()
        done_queued = [wait_done(c, job_id, timeout=120) for job_id in queued]
        done_running = [wait_done(c, job_id, timeout=180) for job_id in running]
        assert first.process.wait(timeout=60) == 0  # it left on its own once its four were done
    for job in done_running:
        assert (job["status"], job["attempts"], ran_on(job)) == ("succeeded", 1, first_id), job
        assert job["result"]["usage"]["completion_tokens"] == 300
    for job in done_queued:
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
        assert ran_on(job) != first_id  # nothing new was taken by the draining worker
        # Taken while the drain was still under way, not once it was over.
        assert job["started_at"] < min(j["finished_at"] for j in done_running)


def test_a_job_past_the_drain_deadline_is_handed_back_and_taken_over_at_once(tmp_path: Path) -> None:
    with cluster(tmp_path, WORKER_DRAIN_SECONDS="2") as stack, httpx.Client(base_url=stack.url, timeout=30) as c:
        first = stack.worker()
        (first_id,) = workers(c)
        job_id = str(submit(c, "completion", **counting(1, 400))["id"])
        wait_for_first_token(c, job_id)
        stack.worker()
        first.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_until(lambda: c.get(f"/v1/jobs/{job_id}").json()["attempts"] == 2, timeout=30, what="a takeover")
        taken_over = time.monotonic() - signalled
        print(f"drain: taken over {taken_over:.1f} s after SIGTERM")  # noqa: T201 - the figure docs/deployment.md quotes
        assert first.process.wait(timeout=30) == 0
        job = wait_done(c, job_id, timeout=180)
    assert job["status"] == "succeeded" and ran_on(job) != first_id, job
    assert job["result"]["usage"]["completion_tokens"] == 400
    # Two seconds of drain, then back on the broker at once: far sooner than the 300 s visibility timeout.
    assert 2.0 <= taken_over < 15.0, taken_over


def test_draining_through_the_api_keeps_the_process_and_turns_it_unready(tmp_path: Path) -> None:
    metrics_port = free_port()
    with cluster(tmp_path) as stack, httpx.Client(base_url=stack.url, timeout=30) as c:
        first = stack.worker(WORKER_METRICS_PORT=str(metrics_port))
        (first_id,) = workers(c)
        own = f"http://127.0.0.1:{metrics_port}"
        assert httpx.get(f"{own}/ready").status_code == 200
        stack.worker()
        assert c.post("/v1/workers/worker_000000000000/drain").status_code == 404
        answer = c.post(f"/v1/workers/{first_id}/drain")
        assert answer.status_code == 202 and answer.json()["draining"] is True
        wait_until(lambda: workers(c)[first_id]["draining"], timeout=5, what="the worker to say it drains")
        assert httpx.get(f"{own}/ready").status_code == 503
        assert httpx.get(f"{own}/health").status_code == 200
        assert "# HELP worker_jobs_total" in httpx.get(f"{own}/metrics").text  # and the metrics as before
        assert c.get("/ready").json()["queues"]["llm"]["workers"] == 1  # the other one; the drained one counts not
        jobs = [wait_done(c, str(submit(c, "completion", **counting(1 + 10 * i, 4))["id"])) for i in range(4)]
        assert [job["status"] for job in jobs] == ["succeeded"] * 4
        assert all(ran_on(job) != first_id for job in jobs)
        assert first.alive()  # drained, not stopped
        metrics = c.get("/metrics").text
        assert 'app_queue_workers{queue="llm"} 1.0' in metrics
