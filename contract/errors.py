"""The errors a job can end with: one tree, each class with the string `code` that becomes the job's
`error.type` and a coarse `category` that each surface (HTTP, WebSocket, batch lines) maps on its own.

    JobError                    internal           internal_error   a failure with no cause of its own
    ├── EngineError             internal           engine_error     an engine failed (a bug, a broken context)
    │   ├── EngineStalled       internal           engine_stalled   it stopped making progress; the worker restarts
    │   ├── ModelUnavailable    unavailable        model_unavailable  the model cannot be found or loaded here
    │   ├── InvalidJobInput     invalid_request    invalid_input    well-formed, but this engine cannot serve it
    │   │   └── ContextOverflow invalid_request    context_length_exceeded  prompt + max_tokens > the context
    │   └── UpstreamError       upstream           upstream_error   a remote engine (OpenAudio) failed
    │       └── UpstreamTimeout timeout            upstream_timeout a remote engine did not answer in time
    ├── InvalidAudio            unprocessable      invalid_audio    the audio cannot be used (corrupt, too low a rate)
    │   ├── EmptyAudio          invalid_request    empty_file       the file is empty
    │   ├── UnsupportedAudio    unsupported_media  unsupported_media_type  not an audio container we accept
    │   └── AudioTooLong        unprocessable      audio_too_long   longer than MAX_AUDIO_SECONDS
    ├── JobTimedOut             timeout            timeout          the job ran past TASK_TIME_LIMIT_SECONDS
    ├── StorageFull             storage_full       insufficient_storage  Redis had no room for the job's output
    ├── BrokerUnavailable       unavailable        broker_unavailable  the job broker refused the job's message
    ├── WorkerLost              internal           worker_lost      its workers died JOB_MAX_ATTEMPTS times (claim.lua)
    ├── StageCancelled          internal           stage_cancelled  a dialogue stage was cancelled under it
    └── StageExpired            internal           stage_expired    a dialogue stage expired in its queue

The worker's `DeadlinePassed` (`workers.execution`) narrows `JobTimedOut` to the job's own deadline, so
that a dialogue stage's timeout is not taken for its parent's. Cancellation (`JobCancelled`) and a lost
lease (`LeaseLost`) are not failures and stay outside the tree.

A job's record keeps the failure as `{type: code, message}`; `failure_from` turns that back into its
class. Messages are written for the client: a failure that is not a `JobError` (a bug) is recorded with
a generic message, and its text goes to the log only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Any


class Category(StrEnum):
    """What kind of failure it is, whoever asks; each surface maps these, never the codes."""

    invalid_request = "invalid_request"  # the request cannot be served as it is
    unprocessable = "unprocessable"  # well-formed, but its content is unusable (corrupt audio)
    unsupported_media = "unsupported_media"  # not a kind of file that is accepted
    unavailable = "unavailable"  # not here now (a model, the broker); may work later
    upstream = "upstream"  # a remote engine failed
    timeout = "timeout"  # something took too long
    storage_full = "storage_full"  # the job store has no room
    internal = "internal"  # our fault


class JobError(Exception):
    code = "internal_error"
    category = Category.internal

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def as_record(self) -> dict[str, str]:
        """The job record's `error`: `{type, message}`."""
        return {"type": self.code, "message": self.message}


class EngineError(JobError):
    code = "engine_error"


class EngineStalled(EngineError):
    code = "engine_stalled"


class ModelUnavailable(EngineError):
    code, category = "model_unavailable", Category.unavailable


class InvalidJobInput(EngineError):
    code, category = "invalid_input", Category.invalid_request


class ContextOverflow(InvalidJobInput):
    code = "context_length_exceeded"


class UpstreamError(EngineError):
    code, category = "upstream_error", Category.upstream


class UpstreamTimeout(UpstreamError):
    code, category = "upstream_timeout", Category.timeout


class InvalidAudio(JobError):
    code, category = "invalid_audio", Category.unprocessable


class EmptyAudio(InvalidAudio):
    code, category = "empty_file", Category.invalid_request


class UnsupportedAudio(InvalidAudio):
    code, category = "unsupported_media_type", Category.unsupported_media


class AudioTooLong(InvalidAudio):
    code = "audio_too_long"


class JobTimedOut(JobError):
    code, category = "timeout", Category.timeout


class StorageFull(JobError):
    code, category = "insufficient_storage", Category.storage_full


class BrokerUnavailable(JobError):
    code, category = "broker_unavailable", Category.unavailable


class WorkerLost(JobError):
    code = "worker_lost"


class StageCancelled(JobError):
    code = "stage_cancelled"


class StageExpired(JobError):
    code = "stage_expired"


def _tree(root: type[JobError]) -> Iterator[type[JobError]]:
    yield root
    for sub in root.__subclasses__():
        yield from _tree(sub)


def error_classes() -> dict[str, type[JobError]]:
    """Every class of the tree that has a code of its own, by that code (a subclass that only narrows
    where its parent is raised, such as the worker's `DeadlinePassed`, is left out)."""
    return {cls.code: cls for cls in _tree(JobError) if "code" in vars(cls)}


def failure_from(error: Mapping[str, Any] | None) -> JobError:
    """A recorded `{type, message}` as its class in the tree; an unknown type is a plain `JobError`."""
    if not error:
        return JobError("the job failed")
    cls = error_classes().get(str(error.get("type")), JobError)
    return cls(str(error.get("message") or "the job failed"))


def internal_error_message(request_id: str | None, job_id: str | None = None) -> str:
    """What a client is told of a failure that is a bug: an id to quote (the log has the rest), nothing
    of its text."""
    if request_id:
        return f"internal error (request id {request_id})"
    return f"internal error (job {job_id})" if job_id else "internal error"
