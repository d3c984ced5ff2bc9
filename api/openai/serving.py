"""Serving OpenAI chat and text completions from speechq jobs, blocking or as `chat.completion.chunk` SSE."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.deps import PrincipalDep, RequestIdDep, StateDep
from api.errors import JobFailure, Unprocessable, error_body, validated
from api.openai.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequestOpenAI,
    CompletionResponse,
    now,
)
from api.state import AppState
from api.submit import follow, submit, wait_for
from contract.generation import ChatRequest, CompletionRequest, GenerationParams, GenerationResult, Token
from contract.jobs import EventType, JobKind, JobRecord
from contract.results import result_of

router = APIRouter(prefix="/v1", tags=["OpenAI compatible"])

Chunk = Callable[[str | None, str | None], dict[str, Any]]


def chat_payload(body: ChatCompletionRequest) -> GenerationParams:
    """An OpenAI chat request as a `chat` job's request (404 for an unknown model, 422 naming a bad field)."""
    try:
        messages = [m.to_chat().model_dump() for m in body.messages]
    except ValueError as exc:
        raise Unprocessable(str(exc), param="messages") from exc
    fields = {**body.sampling(body.max_completion_tokens or body.max_tokens), "messages": messages}
    return validated(ChatRequest, fields)


def completion_payload(body: CompletionRequestOpenAI) -> GenerationParams:
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    return validated(CompletionRequest, {**body.sampling(body.max_tokens), "prompt": prompt})


# Declared for the JSON answer; with `stream` the route answers server-sent events instead.
@router.post("/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(
    body: ChatCompletionRequest, state: StateDep, principal: PrincipalDep, rid: RequestIdDep, response: Response
) -> ChatCompletionResponse | EventSourceResponse:
    job, _ = await submit(state, JobKind.chat, chat_payload(body), principal, request_id=rid)
    completion_id, created = f"chatcmpl-{job.id}", now()

    def chunk(delta: str | None, finish: str | None) -> dict[str, Any]:
        content = {"content": delta} if delta is not None else {}
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": [{"index": 0, "delta": content, "finish_reason": finish, "logprobs": None}],
        }

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        first = chunk("", None)
        first["choices"][0]["delta"]["role"] = "assistant"
        return _stream(state, job, chunk, include_usage, first)
    result = result_of(await wait_for(state, job), GenerationResult)
    response.headers["X-Job-ID"] = job.id
    return ChatCompletionResponse.of(job.id, body.model, created, result)


@router.post("/completions", response_model=CompletionResponse)
async def completions(
    body: CompletionRequestOpenAI, state: StateDep, principal: PrincipalDep, rid: RequestIdDep, response: Response
) -> CompletionResponse | EventSourceResponse:
    job, _ = await submit(state, JobKind.completion, completion_payload(body), principal, request_id=rid)
    completion_id, created = f"cmpl-{job.id}", now()

    def chunk(delta: str | None, finish: str | None) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [{"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}],
        }

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _stream(state, job, chunk, include_usage, None)
    result = result_of(await wait_for(state, job), GenerationResult)
    response.headers["X-Job-ID"] = job.id
    return CompletionResponse.of(job.id, body.model, created, result)


def _stream(
    state: AppState, job: JobRecord, chunk: Chunk, include_usage: bool, first: dict[str, Any] | None
) -> EventSourceResponse:
    async def events() -> AsyncIterator[ServerSentEvent]:
        if first is not None:
            yield ServerSentEvent(data=json.dumps(first))
        result: GenerationResult | None = None
        async for event in follow(state, job.id):
            if event.type == EventType.token:
                yield ServerSentEvent(data=json.dumps(chunk(Token.model_validate(event.data).text, None)))
            elif event.type == EventType.result:
                result = GenerationResult.model_validate(event.data)
            elif event.type == EventType.error:
                # The same envelope (and `type`) as the blocking answer to the same failure.
                yield ServerSentEvent(data=json.dumps(error_body(JobFailure.recorded(event.data))))
            elif event.type == EventType.done and result is not None:
                yield ServerSentEvent(data=json.dumps(chunk(None, result.finish_reason)))
                if include_usage:
                    usage = chunk(None, None)
                    usage["choices"], usage["usage"] = [], result.usage.model_dump()
                    yield ServerSentEvent(data=json.dumps(usage))
        yield ServerSentEvent(data="[DONE]")

    return EventSourceResponse(events(), ping=15, headers={"X-Job-ID": job.id})
