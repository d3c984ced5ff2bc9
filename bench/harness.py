"""A private speechq stack (embedded Valkey, one API process, one worker) for a benchmark run."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cli.embedded_redis import EmbeddedRedis
from tests.stack import base_env, start_api, start_worker, wait_for_worker


@dataclass
class BenchStack:
    url: str
    redis_url: str


@contextmanager
def bench_stack(queues: str = "llm", **env_overrides: str) -> Iterator[BenchStack]:
    with tempfile.TemporaryDirectory(prefix="speechq-bench-") as tmp, EmbeddedRedis(Path(tmp) / "valkey") as redis:
        env = base_env(redis.url, Path(tmp), **env_overrides)
        worker = start_worker(env, Path(tmp), queues=queues)
        api, url = start_api(env, Path(tmp))
        try:
            for queue in queues.split(","):
                wait_for_worker(url, worker, queue=queue)
            yield BenchStack(url=url, redis_url=redis.url)
        finally:
            api.stop()
            worker.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values)
