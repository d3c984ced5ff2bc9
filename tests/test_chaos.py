"""Chaos (issue 15): 200 short jobs on 2 workers that are SIGKILLed and replaced again and again, one of
them while it holds the restore sweep's mutex — every job ends within the visibility timeout + 30 s of
the last kill, and none is answered twice."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import httpx
import redis

from cli.embedded_redis import EmbeddedRedis
from jobstore import keys
from tests.records import event_log, event_types
from tests.stack import Process, base_env, start_api, start_worker, wait_for_worker, wait_until

JOBS = 200
VISIBILITY = 12
ENDED = {"succeeded", "failed", "cancelled", "expired"}


def test_jobs_survive_workers_killed_at_random(tmp_path: Path) -> None:
    rng = random.Random(15)
    with EmbeddedRedis(tmp_path / "valkey") as server:
        env = base_env(
            server.url,
            tmp_path,
            TASK_TIME_LIMIT_SECONDS=str(VISIBILITY - 2),
            BROKER_VISIBILITY_TIMEOUT_SECONDS=str(VISIBILITY),
            BROKER_RESTORE_INTERVAL_SECONDS="1",
            JOB_LEASE_SECONDS="2",
            JOB_MAX_ATTEMPTS="5",
            LLM_PARALLEL="2",
            LLM_N_THREADS="1",
            MAX_ACTIVE_JOBS_PER_KEY="0",
        )
        workers: list[Process] = [start_worker(env, tmp_path, queues="llm") for _ in range(2)]
        api, url = start_api(env, tmp_path)
        store = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            for worker in workers:
                wait_for_worker(url, worker)
            with httpx.Client(base_url=url, timeout=30) as client:
                body = {"prompt": "a", "max_tokens": 6, "temperature": 0}
                jobs = [client.post("/v1/jobs/completion", json=body).json()["id"] for _ in range(JOBS)]
            for kill in range(4):
                time.sleep(rng.uniform(0.5, 2.0))
                victim = rng.choice([w for w in workers if w.alive()])
                if kill == 2:
                    # Killed while holding kombu's restore mutex: it lapses with the sweep interval (R2).
                    store.set("unacked_mutex", "held-by-the-victim", ex=1)
                victim.process.send_signal(signal.SIGKILL)
                victim.process.wait(10)
                workers.append(start_worker(env, tmp_path, queues="llm"))
            last_kill = time.monotonic()

            def statuses() -> list[str]:
                pipe = store.pipeline(transaction=False)
                for job in jobs:
                    pipe.hget(keys.job(job), "status")
                return list(pipe.execute())

            wait_until(
                lambda: all(status in ENDED for status in statuses()),
                timeout=VISIBILITY + 30,
                interval=0.5,
                what="every job to end",
            )
            assert time.monotonic() - last_kill <= VISIBILITY + 30
            attempts = [int(store.hget(keys.job(job), "attempts") or 0) for job in jobs]
            assert max(attempts) >= 2, "no kill hit a running job: the test proved nothing"
            for job in jobs:
                events = event_types(store, job)
                assert events[-1] == "done" and events.count("done") == 1, (job, events)
                assert events.count("result") <= 1, (job, events)  # never answered twice
                done = json.loads(event_log(store, job)[-1][1]["data"])
                assert done["status"] == "succeeded", (job, store.hgetall(keys.job(job)))
        finally:
            store.close()
            api.stop()
            for worker in workers:
                worker.stop()
