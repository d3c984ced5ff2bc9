"""Job handlers: turn a claimed job into engine calls and events, and return its result."""

from __future__ import annotations

import time
from typing import Any

from tasks.execution import JobExecution
from tasks.jobs import EventType, JobKind, JobRecord
from tasks.payloads import ChatMessage, ChatRequest, CompletionRequest, GenerateRequest
from workers.llm import Prompt
from workers.models import ModelCache


class TokenBatcher:
    """Sends text deltas as `token` events: the first at once, later ones gathered for up to `window` s.

    Each event wakes every live reader of the job; on a small machine those wake-ups compete with the
    model for the same cores, so a short window keeps streamed tokens/s at the in-process rate while
    adding at most `window` to when a delta is seen.
    """

    def __init__(self, run: JobExecution, window: float) -> None:
        self.run = run
        self.window = window
        self.pending: list[str] = []
        self.sent_at = 0.0

    def __call__(self, text: str) -> None:
        self.pending.append(text)
        if time.monotonic() - self.sent_at >= self.window:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.run.emit(EventType.token, {"text": "".join(self.pending)})
            self.pending.clear()
            self.sent_at = time.monotonic()


def run_llm_job(job: JobRecord, run: JobExecution, models: ModelCache) -> dict[str, Any]:
    """generate / chat / completion: stream `token` events, return the text and its usage."""
    params: GenerateRequest | ChatRequest | CompletionRequest
    if job.kind == JobKind.chat:
        params = ChatRequest.model_validate(job.request)
        engine = models.llm(params.model)
        prompt = engine.chat_prompt(params.messages)
    elif job.kind == JobKind.generate:
        params = GenerateRequest.model_validate(job.request)
        engine = models.llm(params.model)
        prompt = engine.chat_prompt([ChatMessage(role="user", content=params.prompt)])
    else:
        params = CompletionRequest.model_validate(job.request)
        engine = models.llm(params.model)
        prompt = Prompt(params.prompt, (), add_bos=True)

    batcher = TokenBatcher(run, window=models.settings.llm_stream_batch_seconds)
    generation = engine.generate(prompt, params, batcher)
    batcher.flush()
    return {
        "text": generation.text,
        "model": engine.name,
        "finish_reason": generation.finish_reason,
        "usage": {
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens,
        },
        "timings": {
            "seconds": round(generation.seconds, 4),
            "first_token_seconds": (
                round(generation.first_token_seconds, 4) if generation.first_token_seconds is not None else None
            ),
            "tokens_per_second": (
                round(generation.completion_tokens / generation.seconds, 2) if generation.seconds > 0 else None
            ),
        },
    }
