"""No job stays `running` once its worker and its message are both gone (issue 15, R1), nor `queued` once
a dying consumer lost its message, and the restore sweep's mutex never delays a redelivery past its own
interval (R2)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest
import redis
from kombu.transport.redis import Channel as RedisChannel

from cli.embedded_redis import EmbeddedRedis
from config import load_settings
from contract.jobs import JobKind, JobStatus
from jobstore import keys
from tasks.celery_app import create_celery
from tests.records import age_lease, create_job, event_types
from tests.sse import read_events
from tests.stack import base_env, free_port, start_api, start_worker, wait_for_worker, wait_until
from workers.execution import WorkerStore
from workers.reaper import UNACKED, Reaper

LEASE = 30.0  # long: time is driven (`age_lease`), never waited for


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[str]:
    with EmbeddedRedis(tmp_path / "valkey") as server:
        yield server.url


def test_a_sweep_requeues_only_jobs_that_lost_worker_and_message(valkey: str) -> None:
    settings = load_settings(redis_url=valkey, job_lease_seconds=LEASE)
    client = redis.Redis.from_url(valkey, decode_responses=True)
    store = WorkerStore(client, ttl=600, lease=LEASE, max_attempts=3)
    store.offer("worker-gone", {"llm": 8}, expires=time.time() + 600)  # so each job is admitted at once
    celery = create_celery(settings)

    def claimed() -> tuple[str, str]:
        job_id = create_job(valkey, JobKind.completion, {"prompt": "a"}).id
        message = cast(str, client.lindex("llm", 0))  # the newest message (kombu pushes on the left)
        assert store.claim(job_id, "worker-gone").run
        return job_id, message

    orphan, held, live, ended = (claimed() for _ in range(4))
    client.delete("llm")  # the messages were taken off the queue by the (now gone) consumers
    client.hset(UNACKED, "tag-1", f'[{held[1]}, "llm", "llm"]')  # one still held by a worker's prefetch
    client.hset(keys.job(ended[0]), "status", JobStatus.succeeded.value)
    reaper = Reaper(client, celery, settings)
    assert reaper.sweep() == []  # every lease is still young

    for job_id, _ in (orphan, held, live, ended):
        age_lease(client, job_id, 3 * LEASE)  # time passes: every lease has run out, and its grace too…
    # …but the live job's worker is still there, and renews.
    store.scripts["renew"](keys=[keys.job(live[0]), keys.LEASES], args=[LEASE, "worker-gone", live[0]])
    sent = reaper.sweep()
    names = {orphan[0]: "orphan", held[0]: "held", live[0]: "live", ended[0]: "ended"}
    assert [names[j] for j in sent] == ["orphan"]
    [message] = client.lrange("llm", 0, -1)
    assert f'"id": "{orphan[0]}"' in message
    assert client.zscore(keys.LEASES, ended[0]) is None  # dropped from the index
    assert reaper.sweep() == []  # not sent twice while the claim has its chance
    # The claim treats it as a redelivery: its worker is gone, so it runs again.
    claim = store.claim(orphan[0], "worker-new")
    assert claim.run and claim.attempt == 2
    client.close()


def test_a_sweep_requeues_a_queued_job_whose_message_a_dying_consumer_lost(valkey: str) -> None:
    """kombu pops a message before it records it as unacknowledged: a consumer SIGKILLed in between lost
    it (seen in the chaos test). Once a visibility timeout has passed, the reaper gives that job a fresh
    message; a job whose message waits in the queue, or sits unacknowledged, or that ended, gets none."""
    settings = load_settings(redis_url=valkey)
    client = redis.Redis.from_url(valkey, decode_responses=True)
    store = WorkerStore(client, ttl=600, lease=LEASE, max_attempts=3)
    store.offer("worker-1", {"llm": 8}, expires=time.time() + 600)  # so each job is admitted at once
    lost, waiting, held, cancelled = (create_job(valkey, JobKind.completion, {"prompt": "a"}).id for _ in range(4))
    messages = {
        job_id: next(m for m in cast(list[str], client.lrange("llm", 0, -1)) if job_id in m) for job_id in (lost, held)
    }
    client.lrem("llm", 1, messages[lost])  # popped by a consumer that died before recording it
    client.lrem("llm", 1, messages[held])  # popped and recorded by a consumer that holds it still
    client.hset(UNACKED, "tag-1", f'[{messages[held]}, "llm", "llm"]')
    client.hset(keys.job(cancelled), "status", JobStatus.cancelled.value)
    reaper = Reaper(client, create_celery(settings), settings)
    assert reaper.sweep() == [], "no message is looked for before a visibility timeout has passed"

    wait = settings.visibility_timeout + settings.broker_restore_interval_seconds
    for job_id in (lost, waiting, held, cancelled):  # time passes for them (scores are when to look)
        client.zadd(keys.QUEUED, {job_id: cast(float, client.zscore(keys.QUEUED, job_id)) - wait - 1})
    assert reaper.sweep() == [lost]
    queue = cast(list[str], client.lrange("llm", 0, -1))
    assert [sum(job_id in m for m in queue) for job_id in (lost, waiting, held)] == [1, 1, 0]
    assert client.zscore(keys.QUEUED, cancelled) is None, "an ended job leaves the index"
    assert reaper.sweep() == [], "each is looked at again only a visibility timeout later"
    claim = store.claim(lost, "worker-new")
    assert claim.run and claim.attempt == 1 and client.zscore(keys.QUEUED, lost) is None
    client.close()


def test_a_worker_outlives_its_broker_and_the_job_it_was_running_ends(tmp_path: Path) -> None:
    """Valkey SIGKILLed mid-generation and restarted 10 s later on the same data, under a single-queue worker
    started on its own (nobody to restart it): the worker reconnects by itself, the job it was running ends
    within a visibility timeout + 30 s (redelivered, or reaped when its writes were lost), and the next job
    runs on the same process. kombu used to take the worker down with the connection (issue 20)."""
    port = free_port()
    data = tmp_path / "valkey"
    with EmbeddedRedis(data, port) as server:
        env = base_env(
            server.url,
            tmp_path,
            JOB_LEASE_SECONDS="2",
            BROKER_RESTORE_INTERVAL_SECONDS="1",
            TASK_TIME_LIMIT_SECONDS="20",
            BROKER_VISIBILITY_TIMEOUT_SECONDS="25",
        )
        worker = start_worker(env, tmp_path, queues="llm")
        api, url = start_api(env, tmp_path)
        try:
            wait_for_worker(url, worker)
            with httpx.Client(base_url=url, timeout=30) as client:
                body = {"prompt": "Once upon a time", "max_tokens": 200, "temperature": 0.7}
                job = client.post("/v1/jobs/completion", json=body).json()["id"]
                with redis.Redis.from_url(server.url, decode_responses=True) as probe:
                    wait_until(lambda: "token" in event_types(probe, job), timeout=60, what="the job mid-generation")
                    pid = int(probe.info("server")["process_id"])
                os.kill(pid, signal.SIGKILL)
                time.sleep(10.0)  # the scenario: the broker stays away for 10 s, not a wait on something
                with EmbeddedRedis(data, port):
                    back = time.monotonic()
                    final = wait_until(
                        lambda: (j := client.get(f"/v1/jobs/{job}").json())["status"] in ("succeeded", "failed") and j,
                        timeout=25 + 30,
                        what="the job to end after the crash",
                    )
                    assert time.monotonic() - back <= 25 + 30
                    assert final["attempts"] >= 1
                    events = read_events(client, job)  # the stream ends
                    assert events[-1].event == "done"
                    assert [e.event for e in events].count("result") <= 1
                    after = client.post("/v1/jobs/completion", json={"prompt": "Hello", "max_tokens": 4}).json()["id"]
                    assert read_events(client, after)[-1].json() == {"status": "succeeded"}
                assert worker.alive(), "nobody restarts this worker: it must have lived through the outage"
                log = worker.log()
                assert "Connection to broker lost" in log, "the outage did not reach the consumer: nothing was shown"
                assert "Unrecoverable error" not in log
        finally:
            api.stop()
            worker.stop()


def test_the_restore_sweeps_mutex_expires_with_the_sweep_interval(valkey: str) -> None:
    """kombu's restore sweep holds `unacked_mutex`, 300 s by default: a worker killed while holding it held
    back every dead worker's redelivery that long. Now it lapses after one sweep interval."""
    settings = load_settings(redis_url=valkey, broker_restore_interval_seconds=3)
    with create_celery(settings).connection_for_write() as connection:
        channel = connection.default_channel
        assert isinstance(channel, RedisChannel)
        assert channel.unacked_mutex_expire == 3
        assert channel.unacked_restore_interval == 3  # type: ignore[attr-defined]  # a transport option the stubs lack
