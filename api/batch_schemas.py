"""Public shapes of files and batches: OpenAI's File and Batch objects, as the official client reads them.
The stores keep these as dicts (`jobstore/files.py`, `jobstore/batches.py`); the routes answer these."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

BatchStatus = Literal[
    "validating",  # being read; a batch leaves it before its create answers
    "failed",  # a line did not validate (see `errors`), or its files could not be written
    "in_progress",  # its jobs are queued or running
    "finalizing",  # every job has ended; its output and error files are being written
    "completed",  # its files are written
    "expired",  # its 24 h window passed; what ran is in its files
    "cancelling",  # cancelled (or expired): waiting for its running jobs to stop
    "cancelled",  # cancelled; what ran is in its files
]


class FilePublic(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"


class FilesPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[FilePublic]
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class BatchError(BaseModel):
    """Why a batch failed: a line of its input that did not validate (`line`), or the batch as a whole."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchRequestCounts(BaseModel):
    total: int
    completed: int
    failed: int
    # speechq's, beside OpenAI's three: lines not yet started (waiting for a slot), and started not ended.
    waiting: int = 0
    running: int = 0


class BatchPublic(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts
    metadata: dict[str, str] | None = None


class BatchesPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchPublic]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
