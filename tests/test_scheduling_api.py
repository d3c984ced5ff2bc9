"""Scheduling end to end: a real worker with one generation slot, two API keys, the official `openai` client.
Interactive work overtakes a flex batch, a key cannot raise itself above its tiers, a waiting job shows and
streams its place in line, and /metrics counts what waits."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from httpx_sse import connect_sse
from openai import OpenAI

from tests.stack import PrivateStack, private_stack, wait_until

KEY_A, KEY_B = "sched-key-a", "sched-key-b"
LONG = {"prompt": "Once upon a time", "max_tokens": 48, "temperature": 0.8}


def key_id(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateStack]:
    policies = {key_id(KEY_B): {"tiers": ["default", "flex"], "default_tier": "default"}}
    with private_stack(
        tmp_path_factory.mktemp("sched"),
        "llm",
        LLM_PARALLEL="1",
        API_KEY_ENABLED="true",
        API_KEYS=f"{KEY_A},{KEY_B}",
        API_KEY_POLICIES=json.dumps(policies),
    ) as created:
        yield created


def http(stack: PrivateStack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.url, timeout=120, headers={"Authorization": f"Bearer {key}"})


def started(job: dict[str, Any]) -> float:
    return datetime.fromisoformat(job["started_at"]).timestamp()


def wait_done(client: httpx.Client, job_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] not in ("queued", "running") else None

    return wait_until(ended, timeout=180, what=f"job {job_id} to end")


def test_the_openai_client_asks_for_a_tier_and_is_told_the_one_used(stack: PrivateStack) -> None:
    cases: list[tuple[str, Literal["flex", "priority"], str]] = [
        (KEY_A, "flex", "flex"),
        (KEY_A, "priority", "priority"),
        (KEY_B, "priority", "default"),  # key B may not use priority: it runs at the highest tier it may
    ]
    for key, asked, used in cases:
        openai = OpenAI(base_url=f"{stack.url}/v1", api_key=key)
        reply = openai.chat.completions.create(
            model="gemma-3-270m", messages=[{"role": "user", "content": "Hi"}], max_tokens=2, service_tier=asked
        )
        assert reply.service_tier == used, (key, asked)
        with http(stack, key) as client:
            job = client.get(f"/v1/jobs/{reply.id.removeprefix('chatcmpl-')}").json()
        assert job["service_tier"] == used


def test_interactive_work_overtakes_a_flex_flood_and_waiting_jobs_know_their_place(stack: PrivateStack) -> None:
    with http(stack, KEY_A) as a, http(stack, KEY_B) as b:
        flood = [a.post("/v1/jobs/completion", json={**LONG, "service_tier": "flex"}).json()["id"] for _ in range(8)]
        last = flood[-1]
        wait_until(lambda: a.get(f"/v1/jobs/{flood[0]}").json()["status"] == "running", what="the flood running")
        place = a.get(f"/v1/jobs/{last}").json()
        assert place["status"] == "queued" and place["service_tier"] == "flex"
        assert 5 <= place["queue_position"] <= 6, "one slot, the first job on it: the others wait before the last"

        queued_events: list[dict[str, Any]] = []

        def follow() -> None:
            with connect_sse(a, "GET", f"/v1/jobs/{last}/events") as source:
                for event in source.iter_sse():
                    if event.event == "queued":
                        queued_events.append(json.loads(event.data))
                    if event.event in ("started", "done"):
                        return

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        metrics = a.get("/metrics").text
        waiting = [
            line for line in metrics.splitlines() if line.startswith('app_jobs_waiting{queue="llm",tier="flex"}')
        ]
        assert len(waiting) == 1 and 4 <= float(waiting[0].rsplit(" ", 1)[1]) <= 7, waiting

        chat = b.post("/v1/jobs/completion", json={"prompt": "Hi", "max_tokens": 2}).json()["id"]
        first = wait_done(b, chat)
        assert first["status"] == "succeeded" and first["service_tier"] == "default"
        ended = [wait_done(a, job_id) for job_id in flood]
        overtaken = sum(started(job) > started(first) for job in ended)
        assert overtaken >= 5, f"the default job started before only {overtaken} of 8 flex jobs"
        follower.join(30)
        positions = [event["queue_position"] for event in queued_events if "queue_position" in event]
        assert len(positions) >= 2 and positions == sorted(positions, reverse=True), queued_events
        assert positions[-1] < 6


def test_a_batch_waits_at_flex_and_shows_its_lines_waiting_running_and_done(stack: PrivateStack) -> None:
    lines = [
        {"custom_id": f"l{n}", "method": "POST", "url": "/v1/completions", "body": {"model": "gemma-3-270m", **LONG}}
        for n in range(6)
    ]
    with http(stack, KEY_A) as a:
        body = "\n".join(json.dumps(line) for line in lines).encode()
        file_id = a.post("/v1/files", files={"file": ("b.jsonl", body)}, data={"purpose": "batch"}).json()["id"]
        created = a.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions"})
        assert created.status_code == 200, created.text
        batch_id = created.json()["id"]
        counts = wait_until(
            lambda: (c := a.get(f"/v1/batches/{batch_id}").json()["request_counts"])["running"] == 1 and c,
            timeout=60,
            what="a line running",
        )
        assert counts["total"] == 6 and counts["waiting"] >= 3
        assert counts["waiting"] + counts["running"] + counts["completed"] == 6
        direct = a.post("/v1/jobs/completion", json={"prompt": "Hi", "max_tokens": 2}).json()["id"]
        assert wait_done(a, direct)["status"] == "succeeded"
        after = a.get(f"/v1/batches/{batch_id}").json()["request_counts"]
        assert after["completed"] + after["running"] <= 3, "the direct job went ahead of the batch's waiting lines"
        a.post(f"/v1/batches/{batch_id}/cancel")
        final = wait_until(
            lambda: (x := a.get(f"/v1/batches/{batch_id}").json())["status"] == "cancelled" and x,
            timeout=60,
            what="the batch cancelled",
        )
        assert final["request_counts"]["total"] == 6


def test_keys_get_fair_shares_of_a_tier(stack: PrivateStack) -> None:
    with http(stack, KEY_A) as a, http(stack, KEY_B) as b:
        flood = [a.post("/v1/jobs/completion", json=LONG).json()["id"] for _ in range(10)]
        time.sleep(0.5)
        single = b.post("/v1/jobs/completion", json=LONG).json()["id"]
        mine = wait_done(b, single)
        ended = [wait_done(a, job_id) for job_id in flood]
        before = sum(started(job) < started(mine) for job in ended)
        assert before <= 3, f"{before} of key A's 10 jobs started before key B's first"


def test_a_bad_policy_stops_start_up_naming_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.stack import base_env

    env = base_env("redis://127.0.0.1:1/0", tmp_path, API_KEY_POLICIES='{"*": {"tiers": ["flex"], "weight": 2}}')
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "api"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 2
    assert "API_KEY_POLICIES" in out.stderr and "default_tier 'default' is not among its tiers" in out.stderr


def test_a_batch_of_more_than_50000_lines_fails_naming_the_limit(stack: PrivateStack) -> None:
    body = {"model": "gemma-3-270m", "prompt": "a", "max_tokens": 1}
    line = {"method": "POST", "url": "/v1/completions", "body": body}
    content = "\n".join(json.dumps({"custom_id": f"c{n}", **line}) for n in range(50_001)).encode()
    with http(stack, KEY_A) as a:
        file_id = a.post("/v1/files", files={"file": ("big.jsonl", content)}, data={"purpose": "batch"}).json()["id"]
        batch = a.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions"}).json()
    assert batch["status"] == "failed"
    first = batch["errors"]["data"][0]
    assert first["code"] == "too_many_requests" and "a batch takes at most 50000" in first["message"]
