"""Draining a worker: it stops taking jobs, finishes what it runs within WORKER_DRAIN_SECONDS, hands back the rest.

A drain begins on SIGTERM (the process then exits once its jobs are done: Celery's warm shutdown) or on
`POST /v1/workers/{id}/drain` (the process stays up, idle and not ready). From that moment:
- its slots are withdrawn, and the jobs it runs stop counting against its queues' capacity
  (`jobstore/lua/drain.lua`): waiting jobs are admitted at once for the other workers' free slots;
- it consumes no more messages, and a message it holds without having started its job (waiting for its
  model's gate) goes back to the broker at once (rejected and requeued);
- a job still running at the deadline is handed back (`jobstore/lua/handback.lua`) and its message requeued:
  the next worker to receive it takes it over as a redelivery at once, not after the visibility timeout;
- its advert says `draining`, so `GET /v1/workers` shows it and `/ready` stops counting it, and its own
  `/ready` (on WORKER_METRICS_PORT) answers 503.
"""

from __future__ import annotations

import threading
import time


class HandBack(Exception):
    """The drain's deadline passed while the job ran: it goes back to the broker for another worker."""


class Drain:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.begun = threading.Event()
        self._deadline: float | None = None
        self._lock = threading.Lock()

    @property
    def draining(self) -> bool:
        return self.begun.is_set()

    def begin(self) -> bool:
        """Start draining now; True the first time, False when it had begun already."""
        with self._lock:
            if self.begun.is_set():
                return False
            self._deadline = time.monotonic() + self.seconds
            self.begun.set()
            return True

    def overdue(self) -> bool:
        """Whether jobs still running must be handed back now."""
        deadline = self._deadline
        return deadline is not None and time.monotonic() >= deadline
