"""A private speechq stack (embedded Valkey, one API process, one worker) for a benchmark run."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.stack import PrivateStack, private_stack


@contextmanager
def bench_stack(queues: str = "llm", **env_overrides: str) -> Iterator[PrivateStack]:
    with (
        tempfile.TemporaryDirectory(prefix="speechq-bench-") as tmp,
        private_stack(Path(tmp), queues, **env_overrides) as stack,
    ):
        yield stack


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values)
