"""`Reaper`: no job stays `running` after its worker and its message are both gone.

A worker that dies is covered by redelivery: its unacknowledged message comes back after the visibility
timeout and the claim runs the job again. But a message can be acknowledged while its job is still
recorded as running — Redis went away under the worker, recording the failure failed too, and Celery
acknowledged the message once the broker was back — and then nothing would ever bring the job back.
Every worker sweeps the lease index (`keys.LEASES`) now and then; a job whose lease ran out more than a
lease ago, and whose message no queue or worker holds, gets a fresh message (`lua/reap.lua`, atomic), so
the claim decides as for any redelivery: run it again, or fail it at JOB_MAX_ATTEMPTS.

Nor does a job stay `queued` after its message is lost: kombu takes a message off the queue before it
records it as unacknowledged, so a consumer killed in between loses it. Queued jobs are indexed too
(`keys.QUEUED`); one still queued a visibility timeout after it was queued — when any message a dead
consumer held would be back — whose message neither the queue nor a consumer holds, gets a fresh one
(`lua/reap_queued.lua`).
"""

from __future__ import annotations

import logging
import threading
from typing import cast

from celery import Celery
from redis import Redis
from redis.exceptions import RedisError

from config import Settings
from contract.jobs import JobKind
from jobstore import keys, scripts
from tasks.envelope import is_redis_url, redis_message
from tasks.registry import task_for

log = logging.getLogger(__name__)
UNACKED = "unacked"  # kombu's Redis transport: the messages its consumers hold, by delivery tag
BATCH = 100  # jobs looked at per sweep


class Reaper(threading.Thread):
    def __init__(self, redis: Redis, celery: Celery, settings: Settings) -> None:
        super().__init__(name="speechq-reaper", daemon=True)
        self.redis = redis
        self.celery = celery
        self.grace = settings.job_lease_seconds
        self.interval = settings.broker_restore_interval_seconds
        self.queued_wait = settings.visibility_timeout + self.interval
        self.stopped = threading.Event()
        self._script = redis.register_script(scripts.source("reap"))
        self._queued_script = redis.register_script(scripts.source("reap_queued"))

    @staticmethod
    def applies(settings: Settings) -> bool:
        """Only where the broker is the job store's Redis: the script looks at its queues and unacked hash."""
        return is_redis_url(settings.broker_url) and settings.broker_url == settings.redis_url

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.sweep()
            except RedisError as exc:  # Redis away: the next sweep tries again
                log.warning("reaper sweep failed: %s", exc)

    def stop(self) -> None:
        self.stopped.set()

    def sweep(self) -> list[str]:
        """Give a fresh message to every job that lost both its worker and its message, and to every queued
        job whose message was lost; returns their ids."""
        return self._sweep_running() + self._sweep_queued()

    def _now(self) -> float:
        seconds, micros = self.redis.time()
        return float(seconds) + micros / 1e6

    def _message(self, job_id: str, kind: str) -> tuple[str, str]:
        """A fresh Celery message for the job, and its queue."""
        spec = task_for(JobKind(kind))
        return spec.queue, redis_message(self.celery, spec.name, spec.queue, job_id, {"job_id": job_id})

    def _sweep_queued(self) -> list[str]:
        now = self._now()
        due = cast(list[str], self.redis.zrangebyscore(keys.QUEUED, "-inf", now - self.queued_wait, 0, BATCH))
        by_queue: dict[str, list[str]] = {}
        for job_id in due:
            kind = cast(str | None, self.redis.hget(keys.job(job_id), "kind"))
            if kind is None:  # expired with its TTL
                self.redis.zrem(keys.QUEUED, job_id)
                continue
            queue, message = self._message(job_id, kind)
            by_queue.setdefault(queue, []).extend((job_id, message))
        sent: list[str] = []
        for queue, pairs in by_queue.items():  # one look through each queue, however many of its jobs are due
            sent += cast(list[str], self._queued_script(keys=[queue, UNACKED], args=[now, *pairs]))
        for job_id in sent:
            log.warning("queued job %s had lost its message; queued it again", job_id)
        return sent

    def _sweep_running(self) -> list[str]:
        cutoff = self._now() - self.grace
        due = cast(list[str], self.redis.zrangebyscore(keys.LEASES, "-inf", cutoff, start=0, num=BATCH))
        sent = []
        for job_id in due:
            kind = cast(str | None, self.redis.hget(keys.job(job_id), "kind"))
            if kind is None:  # expired with its TTL
                self.redis.zrem(keys.LEASES, job_id)
                continue
            queue, message = self._message(job_id, kind)
            job_keys = [keys.job(job_id), keys.LEASES, queue, UNACKED]
            outcome = self._script(keys=job_keys, args=[job_id, self.grace, message])
            if outcome == "sent":
                log.warning("job %s lost its worker and its message; queued it again", job_id)
                sent.append(job_id)
        return sent
