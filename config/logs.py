"""Logging for every speechq process: JSON lines (or plain text) that carry the request id, the job id
and the owner of whatever the line is about.

The ids live in a context variable: the API sets them per request, the worker per job. Celery's own
lines about a task (retry, failure) get the job id from the task being run, whose id is the job id.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

CONTEXT_FIELDS = ("request_id", "job_id", "owner")
_context: ContextVar[dict[str, str]] = ContextVar("speechq_log_context", default={})  # noqa: B039 (never mutated)


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Add ids to every log line written inside the block (in this thread or task)."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: str | None) -> None:
    """Add ids for the rest of the current request (an ASGI request runs in its own task context)."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v}})


def current_request_id() -> str | None:
    """The request id of the request (or job) being served, for a client to quote."""
    return _context.get().get("request_id")


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        fields = _context.get() or _celery_task_fields()
        for name in CONTEXT_FIELDS:
            if name in fields and not hasattr(record, name):
                setattr(record, name, fields[name])
        return True


def _celery_task_fields() -> dict[str, str]:
    state = sys.modules.get("celery._state")
    task = state.get_current_task() if state is not None else None
    if task is None or not getattr(task.request, "id", None):
        return {}
    request_id = getattr(task.request, "request_id", None)
    return {"job_id": task.request.id, **({"request_id": request_id} if request_id else {})}


def configure_logging(level: str, fmt: Literal["json", "text"] = "json", service: str = "speechq") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                static_fields={"service": service},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s [%(process)d] %(request_id)s %(message)s",
                defaults={"request_id": "-"},
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
