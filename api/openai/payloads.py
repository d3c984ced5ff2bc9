"""OpenAI chat and text completion requests as the jobs that answer them: shared by the serving routes
(`api/openai/serving.py`) and the batch planner (`api/batch_lines.py`)."""

from __future__ import annotations

from api.errors import Unprocessable, validated
from api.openai.protocol import ChatCompletionRequest, CompletionRequestOpenAI
from contract.generation import ChatRequest, CompletionRequest, GenerationParams


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
