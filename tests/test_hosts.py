"""speechq across hosts (issue 27): Valkey, two APIs, two worker hosts and a client, each a network namespace of
its own that shares nothing but the network (`tests/netns.py`); links are cut mid-job and restored.

Every measured figure is written to the terminal as `hosts: …` lines.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse
from redis import Redis

from api.routes.models import public_worker_id
from jobstore import keys
from tests.audio import encode, speak, spoken
from tests.netns import Cluster, netns_unavailable, speechq_hosts
from tests.records import event_log, event_types, job_hash
from tests.stack import wait_until

VISIBILITY = 16  # BROKER_VISIBILITY_TIMEOUT_SECONDS: a cut host's jobs come back this long after delivery
SETTINGS = {
    "LLM_N_THREADS": "1",  # two workers on this machine's two cores
    "STT_N_THREADS": "1",
    "LLM_PARALLEL": "2",
    "STT_PARALLEL": "2",
    "DIALOGUE_CONCURRENCY": "2",
    "JOB_LEASE_SECONDS": "2",
    "TASK_TIME_LIMIT_SECONDS": str(VISIBILITY - 1),
    "BROKER_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY),
    "BROKER_RESTORE_INTERVAL_SECONDS": "1",
    "WORKER_HEARTBEAT_SECONDS": "1",  # a cut worker's advertisement lapses after 3 s
    "MAX_ACTIVE_JOBS_PER_KEY": "0",
    "WORKER_DRAIN_SECONDS": "5",  # a stopped worker hands its jobs back soon
}
ENDED = {"succeeded", "failed", "cancelled", "expired"}
KINDS = ("generate", "chat", "completion", "transcribe", "synthesize", "dialogue")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with speechq_hosts(tmp_path_factory.mktemp("hosts"), **SETTINGS) as cluster:
        yield cluster


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        sys.stdout.write(f"\nhosts: {line}\n")


def counting(start: int, max_tokens: int) -> dict[str, object]:
    """A completion that counts on, greedily, for all its tokens."""
    prompt = f"Counting: {start}, {start + 1}, {start + 2}, {start + 3},"
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "repeat_penalty": 1.0}


def submit(client: httpx.Client, kind: str) -> str:
    """One job of `kind`, small enough for this machine."""
    if kind == "transcribe":
        response = client.post("/v1/jobs/transcribe", files={"file": ("fox.wav", spoken("fox"))})
    elif kind == "dialogue":
        pcm, rate = speak("What is the capital of France?")
        fields = {"generation_config": json.dumps({"max_tokens": 12})}
        response = client.post("/v1/jobs/dialogue", files={"file": ("q.wav", encode(pcm, rate))}, data=fields)
    else:
        bodies: dict[str, dict[str, object]] = {
            "generate": {"prompt": "Write one sentence about the sea.", "max_tokens": 12, "seed": 7},
            "chat": {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 12, "seed": 7},
            "completion": counting(1, 12),
            "synthesize": {"text": "Hello from another host."},
        }
        response = client.post(f"/v1/jobs/{kind}", json=bodies[kind])
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def streamed_ids(client: httpx.Client, job_id: str, after: str | None = None) -> list[tuple[str, str]]:
    """(id, type) of every event the client is sent for the job until its `done` (keep-alive pings left out)."""
    headers = {"Last-Event-ID": after} if after else {}
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events", headers=headers) as source:
        assert source.response.status_code == 200, source.response.read()
        return [(event.id, event.event) for event in source.iter_sse() if event.id and event.event != "message"]


def test_jobs_of_every_kind_from_the_client_run_on_both_worker_hosts(
    hosts: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    ran_on: dict[str, set[str]] = {kind: set() for kind in KINDS}
    started, jobs = time.monotonic(), 0
    with hosts.client("api1") as client:
        for _ in range(3):  # rounds of two jobs of each kind still missing a host, submitted together
            missing = [kind for kind in KINDS if len(ran_on[kind]) < 2]
            if not missing:
                break
            submitted = [(kind, submit(client, kind)) for kind in missing for _ in range(2)]
            jobs += len(submitted)
            for kind, job_id in submitted:
                streamed = streamed_ids(client, job_id)
                assert streamed == [(i, f["type"]) for i, f in event_log(hosts.store, job_id)], "the client missed"
                assert streamed[-1][1] == "done"
                job = client.get(f"/v1/jobs/{job_id}").json()
                assert job["status"] == "succeeded", job
                ran_on[kind].add(hosts.worker_of(job))
    assert all(ran == {"gpu1", "gpu2"} for ran in ran_on.values()), ran_on
    report(capsys, f"{jobs} jobs of {len(KINDS)} kinds ran on both worker hosts in {time.monotonic() - started:.1f} s")


@dataclass
class Followed:
    """What the client host saw of one job's stream."""

    job_id: str
    types: list[str] = field(default_factory=list)
    error: str = ""


def follow(client: httpx.Client, into: Followed) -> None:
    try:
        into.types = [kind for _, kind in streamed_ids(client, into.job_id)]
    except Exception as exc:  # noqa: BLE001 - the test reports whatever stopped the stream
        into.error = repr(exc)


def test_a_worker_host_cut_mid_generation_has_its_jobs_finished_once_on_the_other(
    hosts: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    store = hosts.store
    with hosts.client("api1", timeout=90) as client:
        jobs = [submit_body(client, counting(1 + 100 * i, 160)) for i in range(4)]
        followed = [Followed(job_id) for job_id in jobs]
        readers = [threading.Thread(target=follow, args=(client, seen)) for seen in followed]
        for reader in readers:
            reader.start()
        # A worker may hold a third message at its model's gate (its job still `queued`) until one of its two
        # generations ends: wait until every job is decoding or has ended, then cut the host running the most.
        wait_until(lambda: all(decoding_or_ended(store, j) for j in jobs), timeout=90, what="every job decoding")
        records = {job_id: job_hash(store, job_id) for job_id in jobs}
        running = {j: hosts.worker_of(r) for j, r in records.items() if r["status"] == "running"}
        victim = max(("gpu1", "gpu2"), key=list(running.values()).count)
        survivor = hosts.workers["gpu2" if victim == "gpu1" else "gpu1"]
        moved = [job_id for job_id, role in running.items() if role == victim]
        host = hosts.workers[victim].host
        cut_at = time.monotonic()
        hosts.network.cut(host)
        try:
            back = wait_until(
                lambda: running_on(hosts, moved, survivor.pids),
                timeout=VISIBILITY + 30,
                interval=0.1,
                what="redelivery",
            )
            running_again = time.monotonic() - cut_at
            wait_until(lambda: all(job_hash(store, j)["status"] in ENDED for j in jobs), timeout=60, interval=0.1)
            finished = time.monotonic() - cut_at
        finally:
            hosts.network.restore(host)
        restored_at = time.monotonic()
        rejoined = rejoin_seconds(hosts, client, victim, restored_at)
        for reader in readers:
            reader.join(timeout=60)
    # Whatever the cut worker did with the jobs it lost (writes refused during the cut, or landing late after
    # it) has happened by now: none of it may count.
    wait_until(lambda: stale_runs_ended(hosts, victim, moved), timeout=60, what=f"{victim} to drop the jobs it lost")
    for job_id in jobs:
        record, types = job_hash(store, job_id), event_types(store, job_id)
        assert record["status"] == "succeeded", record
        assert types[-1] == "done" and types.count("done") == 1, (job_id, types)
        assert types.count("result") <= 1, (job_id, types)  # never answered twice
        if job_id in moved:
            assert record["worker"] in survivor.pids and record["attempts"] == "2", record
    for seen in followed:
        assert not seen.error and seen.types[-1] == "done", seen  # the client saw each to its end
    assert back and len(moved) >= 1
    assert finished <= VISIBILITY + 30
    report(
        capsys,
        f"worker link cut with {len(moved)} of 4 generations running on {victim}: running again on the other host "
        f"{running_again:.1f} s after the cut, all done {finished:.1f} s after it; link restored → {victim} "
        f"advertised again in {rejoined:.1f} s (VISIBILITY={VISIBILITY} s, lease 2 s, restore sweep 1 s)",
    )


def submit_body(client: httpx.Client, body: dict[str, object]) -> str:
    response = client.post("/v1/jobs/completion", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def decoding_or_ended(store: Redis, job_id: str) -> bool:
    status = job_hash(store, job_id)["status"]
    return status in ENDED or (status == "running" and "token" in event_types(store, job_id))


def running_on(hosts: Cluster, jobs: list[str], worker_ids: Container[str]) -> bool:
    """Every one of `jobs` has been taken over by one of `worker_ids` (running there, or already ended there)."""
    records = [job_hash(hosts.store, job_id) for job_id in jobs]
    return all(r["worker"] in worker_ids and r["status"] in ENDED | {"running"} for r in records)


def stale_runs_ended(hosts: Cluster, role: str, jobs: list[str]) -> bool:
    """`role`'s worker has stopped running every one of `jobs`: Celery logged how each task ended (succeeded,
    raised, ignored, …) or that it will retry it."""
    log = hosts.workers[role].process.log()
    return all(re.search(rf"Task \S+\[{job_id}\] (?!received)", log) for job_id in jobs)


def rejoin_seconds(hosts: Cluster, client: httpx.Client, role: str, since: float) -> float:
    """How long after `since` every worker process of `role` shows up live in GET /v1/workers."""
    public = {public_worker_id(worker_id) for worker_id in hosts.workers[role].pids}
    wait_until(lambda: public <= live_workers(client), timeout=60, interval=0.2, what=f"{role} back")
    return time.monotonic() - since


def live_workers(client: httpx.Client) -> set[str]:
    return {str(worker["id"]) for worker in client.get("/v1/workers").json()["data"]}


def test_a_cut_worker_host_rejoins_when_its_link_returns(hosts: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    worker = hosts.workers["gpu2"]
    public = {public_worker_id(worker_id) for worker_id in worker.pids}
    with hosts.client("api1") as client:
        assert public <= live_workers(client)
        hosts.network.cut(worker.host)
        try:
            wait_until(lambda: not public & live_workers(client), timeout=15, what="the cut worker to lapse")
            assert client.get("/ready").json()["queues"]["llm"]["workers"] == 1
        finally:
            hosts.network.restore(worker.host)
        rejoined = rejoin_seconds(hosts, client, "gpu2", time.monotonic())
        # Nobody restarted it: the processes that advertise themselves are those started before the cut.
        assert worker.process.alive()
        for worker_id, pid in worker.pids.items():
            assert json.loads(str(hosts.store.get(keys.worker(worker_id))))["pid"] == pid
        wait_until(lambda: client.get("/ready").status_code == 200, timeout=10, what="ready with both workers")

        def ran_a_job_there() -> bool:
            jobs = [submit_body(client, counting(7, 8)) for _ in range(4)]
            done = [wait_until(partial(ended, client, job_id), timeout=60) for job_id in jobs]
            assert all(job["status"] == "succeeded" for job in done), done
            return any(job["worker"] in worker.pids for job in done)

        wait_until(ran_a_job_there, timeout=60, interval=0, what="a new job run on the rejoined host")
    report(capsys, f"worker link cut until its advertisement lapsed, restored: live again in {rejoined:.1f} s")


def ended(client: httpx.Client, job_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return job if job["status"] in ENDED else None


def test_a_client_streaming_from_a_cut_api_host_resumes_on_the_other_without_a_gap(
    hosts: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    timeout = httpx.Timeout(30, read=3)  # tokens come every few tens of ms: 3 s of silence is a dead link
    api1 = hosts.network.hosts["api1"]
    seen: list[str] = []
    with hosts.client("api1", timeout) as first, hosts.client("api2", timeout) as second:
        job_id = submit_body(first, counting(1, 200))
        cut_at, stalled = 0.0, -1.0
        try:
            with connect_sse(first, "GET", f"/v1/jobs/{job_id}/events") as source:
                for event in source.iter_sse():
                    seen.extend([event.id] if event.id and event.event != "message" else [])
                    assert event.event != "done", "the job ended before API host 1 was cut"
                    if event.event == "token" and not cut_at and len(seen) >= 10:
                        hosts.network.cut(api1)
                        cut_at = time.monotonic()
        except httpx.ReadTimeout:
            stalled = time.monotonic() - cut_at
        try:
            before = len(seen)
            resumed = streamed_ids(second, job_id, after=seen[-1])
            resumed_in = time.monotonic() - cut_at
        finally:
            hosts.network.restore(api1)
    seen.extend(event_id for event_id, _ in resumed)
    expected = [event_id for event_id, _ in event_log(hosts.store, job_id)]
    missing, duplicates = len(set(expected) - set(seen)), len(seen) - len(set(seen))
    assert stalled >= 0, "the stream from the cut API host never stalled"
    assert resumed[-1][1] == "done" and resumed[0][0] != seen[before - 1]
    assert seen == expected, f"{missing} missing, {duplicates} seen twice"
    report(
        capsys,
        f"API link cut mid-stream after {before} events: the client gave up after {stalled:.1f} s, resumed on "
        f"API host 2 with Last-Event-ID {resumed_in:.1f} s after the cut; {len(expected)} events, "
        f"{missing} missing, {duplicates} twice",
    )
