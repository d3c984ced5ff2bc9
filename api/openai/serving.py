"""Serving OpenAI chat and text completions from speechq jobs, blocking or as `chat.completion.chunk` SSE."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.deps import PrincipalDep, RequestIdDep, StateDep
from api.errors import JobFailure, error_body
from api.intake.jobs import cancelled_if_abandoned, follow, submit, wait_for
from api.openai.payloads import chat_payload, completion_payload
from api.openai.protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChunk,
    CompletionChunkChoice,
    CompletionRequestOpenAI,
    CompletionResponse,
    now,
)
from api.state import AppState
from contract.events import event_data
from contract.generation import GenerationResult
from contract.jobs import EventType, JobKind, JobRecord
from contract.results import result_of

router = APIRouter(prefix="/v1", tags=["OpenAI compatible"])

StreamChunk = ChatCompletionChunk | CompletionChunk
Chunk = Callable[[str | None, str | None], StreamChunk]  # (text delta, finish_reason) -> the next chunk


# Declared for the JSON answer; with `stream` the route answers server-sent events instead.
STREAMED: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}  # events: no schema


@router.post("/chat/completions", response_model=ChatCompletionResponse, responses=STREAMED)
async def chat_completions(
    body: ChatCompletionRequest,
    state: StateDep,
    principal: PrincipalDep,
    rid: RequestIdDep,
    request: Request,
    response: Response,
) -> ChatCompletionResponse | EventSourceResponse:
    job, _ = await submit(state, JobKind.chat, chat_payload(body), principal, request_id=rid)
    completion_id, created = f"chatcmpl-{job.id}", now()

    def chunk(delta: str | None, finish: str | None) -> ChatCompletionChunk:
        choice = ChatChunkChoice(delta=ChatDelta(content=delta), finish_reason=finish)
        return ChatCompletionChunk(
            id=completion_id, created=created, model=body.model, choices=[choice], service_tier=job.service_tier
        )

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        first = chunk("", None)
        first.choices[0].delta.role = "assistant"
        return _stream(state, job, chunk, include_usage, first)
    result = result_of(await wait_for(state, job, client=request), GenerationResult)
    response.headers["X-Job-ID"] = job.id
    return ChatCompletionResponse.of(job.id, body.model, created, result, job.service_tier)


@router.post("/completions", response_model=CompletionResponse, responses=STREAMED)
async def completions(
    body: CompletionRequestOpenAI,
    state: StateDep,
    principal: PrincipalDep,
    rid: RequestIdDep,
    request: Request,
    response: Response,
) -> CompletionResponse | EventSourceResponse:
    job, _ = await submit(state, JobKind.completion, completion_payload(body), principal, request_id=rid)
    completion_id, created = f"cmpl-{job.id}", now()

    def chunk(delta: str | None, finish: str | None) -> CompletionChunk:
        choice = CompletionChunkChoice(text=delta or "", finish_reason=finish)
        return CompletionChunk(id=completion_id, created=created, model=body.model, choices=[choice])

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _stream(state, job, chunk, include_usage, None)
    result = result_of(await wait_for(state, job, client=request), GenerationResult)
    response.headers["X-Job-ID"] = job.id
    return CompletionResponse.of(job.id, body.model, created, result, job.service_tier)


def _stream(
    state: AppState, job: JobRecord, chunk: Chunk, include_usage: bool, first: StreamChunk | None
) -> EventSourceResponse:
    async def events() -> AsyncIterator[ServerSentEvent]:
        if first is not None:
            yield ServerSentEvent(data=first.model_dump_json())
        result: GenerationResult | None = None
        async for event in follow(state, job.id):
            if event.type == EventType.token:
                yield ServerSentEvent(data=chunk(event_data(EventType.token, event.data).text, None).model_dump_json())
            elif event.type == EventType.result:
                result = GenerationResult.model_validate(event.data)
            elif event.type == EventType.error:
                # The same envelope (and `type`) as the blocking answer to the same failure.
                failure = JobFailure(event_data(EventType.error, event.data).failure())
                yield ServerSentEvent(data=json.dumps(error_body(failure)))
            elif event.type == EventType.done and result is not None:
                yield ServerSentEvent(data=chunk(None, result.finish_reason).model_dump_json())
                if include_usage:
                    usage = chunk(None, None).model_copy(update={"choices": [], "usage": result.usage})
                    yield ServerSentEvent(data=usage.model_dump_json())
        yield ServerSentEvent(data="[DONE]")

    return EventSourceResponse(cancelled_if_abandoned(state, job, events()), ping=15, headers={"X-Job-ID": job.id})
