"""A finished job's result, read back as its kind's model (the store keeps it as JSON)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from contract.dialogue import DialogueResult
from contract.generation import GenerationResult
from contract.jobs import JobKind, JobRecord
from contract.synthesis import SynthesisResult
from contract.transcription import TranscriptionResult

JobResult = GenerationResult | TranscriptionResult | SynthesisResult | DialogueResult
R = TypeVar("R", bound=BaseModel)


def parse_result(kind: JobKind, data: dict[str, Any]) -> JobResult:
    """`data`, as stored for a job of `kind`, as that kind's result model."""
    if kind in (JobKind.generate, JobKind.chat, JobKind.completion):
        return GenerationResult.model_validate(data)
    if kind == JobKind.transcribe:
        return TranscriptionResult.model_validate(data)
    if kind == JobKind.synthesize:
        return SynthesisResult.model_validate(data)
    return DialogueResult.model_validate(data)


def result_of(job: JobRecord, model: type[R]) -> R:
    """A finished job's result as `model`, its kind's result model; a job with none is a bug here."""
    if job.result is None:
        raise ValueError(f"job {job.id} ({job.status}) has no result")
    return model.model_validate(job.result)
