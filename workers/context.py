"""`JobContext`: all a handler or engine sees of the job it runs, so that it can run without Celery or Redis.

The worker passes a `JobExecution` (Redis events, a lease, a deadline); a test or a benchmark passes any
object with these two methods, e.g. one that records the events in a list.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel

from contract.jobs import EventType


class JobContext(Protocol):
    """One run of a job, as its handler sees it."""

    def emit(self, event: EventType, data: BaseModel) -> None:
        """Append an event to the job's log, its data one of `contract`'s models; raises when the job must stop
        (`JobCancelled`, `JobTimedOut`, `LeaseLost` in `workers.execution`) or its event cannot be stored
        (`contract.errors.StorageFull`)."""

    def check(self) -> None:
        """Raise as `emit` does when the job must stop, without writing an event: for stretches that emit
        nothing (a prompt still prefilling, a dialogue waiting on its stages)."""
