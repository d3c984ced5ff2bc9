"""One row per Celery task: its name, its queue and the job kinds it runs. The API enqueues by name (it never
imports the task code), the workers register a handler per row, the CLI checks `--queues` against it."""

from __future__ import annotations

from dataclasses import dataclass

from contract.jobs import JobKind


@dataclass(frozen=True, slots=True)
class TaskSpec:
    name: str  # the Celery task name: `speechq.<queue>.<verb>`, routed to its queue by that prefix
    queue: str  # the broker queue, and the worker handler that runs it
    kinds: tuple[JobKind, ...]


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("speechq.llm.generate", "llm", (JobKind.generate, JobKind.chat, JobKind.completion)),
    TaskSpec("speechq.stt.transcribe", "stt", (JobKind.transcribe,)),
    TaskSpec("speechq.tts.synthesize", "tts", (JobKind.synthesize,)),
    TaskSpec("speechq.dialogue.run", "dialogue", (JobKind.dialogue,)),
)
QUEUES: tuple[str, ...] = tuple(spec.queue for spec in TASKS)
BY_KIND: dict[JobKind, TaskSpec] = {kind: spec for spec in TASKS for kind in spec.kinds}
# Celery's routing: each task to the queue its row names.
ROUTES: dict[str, dict[str, str]] = {spec.name: {"queue": spec.queue, "routing_key": spec.queue} for spec in TASKS}


def task_for(kind: JobKind) -> TaskSpec:
    return BY_KIND[kind]
