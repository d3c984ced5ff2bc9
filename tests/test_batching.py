"""Continuous batching through the whole stack: generations run together, leave alone, survive a dead worker.

The session worker runs LLM_PARALLEL=4 slots (the default).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
from httpx_sse import connect_sse

from tests.stack import doomed_worker, private_stack, wait_until
from tests.test_jobs_api import submit, wait_done
from tests.test_recovery import wait_for_first_token


@dataclass
class Followed:
    """A job's events as one client saw them live, with when each arrived."""

    job_id: str
    tokens: list[tuple[float, str]] = field(default_factory=list)
    done_at: float = 0.0
    status: str = ""


def follow(url: str, job_id: str, into: Followed) -> None:
    with (
        httpx.Client(base_url=url, timeout=120) as client,
        connect_sse(client, "GET", f"/v1/jobs/{job_id}/events") as s,
    ):
        for event in s.iter_sse():
            if event.event == "token":
                into.tokens.append((time.monotonic(), event.id))
            elif event.event == "done":
                into.done_at, into.status = time.monotonic(), event.json()["status"]
                return


def run_together(client: httpx.Client, bodies: list[dict[str, object]]) -> tuple[list[Followed], float]:
    """Submit every body at once, follow each job's events on its own connection; returns the wall time."""
    started = time.monotonic()
    jobs = [Followed(str(submit(client, "completion", **body)["id"])) for body in bodies]
    readers = [threading.Thread(target=follow, args=(str(client.base_url), job.job_id, job)) for job in jobs]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(timeout=180)
    return jobs, time.monotonic() - started


def counting(start: int, max_tokens: int = 160) -> dict[str, object]:
    """A completion that counts on, greedily, for all its tokens whatever shares its batch."""
    prompt = f"Counting: {start}, {start + 1}, {start + 2}, {start + 3},"
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "repeat_penalty": 1.0}


def test_four_generations_run_together_and_interleave(client: httpx.Client) -> None:
    [alone], one = run_together(client, [counting(1, 64)])
    assert alone.status == "succeeded"
    jobs, four = run_together(client, [counting(1 + 100 * i, 64) for i in range(4)])
    assert [job.status for job in jobs] == ["succeeded"] * 4
    # Every job streamed its first token before any of them finished…
    assert max(job.tokens[0][0] for job in jobs) < min(job.done_at for job in jobs)
    # …and their token events interleave: some other job streamed between each job's first and last token.
    for job in jobs:
        first, last = job.tokens[0][0], job.tokens[-1][0]
        assert any(first < seen < last for other in jobs if other is not job for seen, _ in other.tokens)
    # bench/batching.py measured about 2.5× one alone on this 2-core machine; one at a time would be 4×.
    assert four < 3.3 * one, f"four together took {four:.2f}s, one alone {one:.2f}s"


def stream_ms(event_id: str) -> float:
    return int(event_id.split("-")[0]) / 1000


def test_cancelling_one_of_four_stops_it_within_a_token_and_the_others_finish(client: httpx.Client) -> None:
    untouched = [str(submit(client, "completion", **counting(start))["id"]) for start in (1, 21, 41)]
    expected = [wait_done(client, job_id)["result"] for job_id in untouched]

    jobs = [str(submit(client, "completion", **counting(start))["id"]) for start in (1, 501, 21, 41)]
    victim = jobs[1]
    wait_until(lambda: all(client.get(f"/v1/jobs/{j}").json()["status"] == "running" for j in jobs), timeout=30)
    for job_id in jobs:
        wait_for_first_token(client, job_id)  # all four are decoding now
    assert client.delete(f"/v1/jobs/{victim}").status_code == 202
    cancelled = wait_done(client, victim, timeout=10)
    assert cancelled["status"] == "cancelled"
    asked = datetime.fromisoformat(str(cancelled["timestamps"]["cancelling_at"])).timestamp()
    with connect_sse(client, "GET", f"/v1/jobs/{victim}/events") as source:
        events = list(source.iter_sse())
    tokens = [e for e in events if e.event == "token"]
    assert tokens, "the victim streamed before it was cancelled"
    late = [e for e in tokens if stream_ms(e.id) > asked]
    assert len(late) <= 1, f"{len(late)} token events after the cancel"
    for job_id, alone in zip((j for j in jobs if j != victim), expected, strict=True):
        job = wait_done(client, job_id, timeout=120)
        assert job["status"] == "succeeded", job
        result = job["result"]
        assert isinstance(result, dict) and isinstance(alone, dict)
        assert result["finish_reason"] == "length" and result["usage"]["completion_tokens"] == 160
        assert result["text"] == alone["text"], "a neighbour's text changed when one of the batch was cancelled"


def test_a_prompt_too_long_for_its_slot_fails_and_the_others_go_on(client: httpx.Client) -> None:
    neighbours = [str(submit(client, "completion", **counting(1 + 100 * i, 48))["id"]) for i in range(3)]
    too_long = str(submit(client, "completion", prompt="word " * 2500, max_tokens=16)["id"])
    failed = wait_done(client, too_long)
    assert failed["status"] == "failed"
    assert failed["error"]["type"] == "context_length_exceeded"
    assert "2048 tokens per sequence" in failed["error"]["message"]
    assert [wait_done(client, j)["status"] for j in neighbours] == ["succeeded"] * 3


def test_a_worker_killed_mid_batch_has_all_four_redelivered(private_redis: str, tmp_path: Path) -> None:
    with (
        doomed_worker(private_redis, tmp_path, time_limit=20) as stack,
        httpx.Client(base_url=stack.url, timeout=30) as client,
    ):
        jobs = [str(submit(client, "completion", **counting(1 + 100 * i, 200))["id"]) for i in range(4)]
        for job_id in jobs:  # all four are in the batch, each has streamed
            wait_for_first_token(client, job_id)
        stack.worker.kill()
        assert all(client.get(f"/v1/jobs/{j}").json()["status"] == "running" for j in jobs)
        stack.rescue()
        for job_id in jobs:
            job = wait_done(client, job_id, timeout=90)
            assert job["status"] == "succeeded", job
            assert job["attempts"] == 2


def test_llm_parallel_1_runs_one_generation_at_a_time(tmp_path: Path) -> None:
    with private_stack(tmp_path, "llm", LLM_PARALLEL="1") as stack, httpx.Client(base_url=stack.url, timeout=30) as c:
        first, second = (str(submit(c, "completion", **counting(1 + 100 * i, 48))["id"]) for i in range(2))
        wait_until(lambda: c.get(f"/v1/jobs/{first}").json()["status"] == "running", timeout=30)
        assert c.get(f"/v1/jobs/{second}").json()["status"] == "queued"  # no second slot: it waits in Redis
        done = [wait_done(c, job_id) for job_id in (first, second)]
        assert [job["status"] for job in done] == ["succeeded"] * 2
        assert done[1]["started_at"] >= done[0]["finished_at"]
