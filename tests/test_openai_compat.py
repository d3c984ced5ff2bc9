"""The official `openai` client against speechq's OpenAI-compatible endpoints."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import Stack


@pytest.fixture
def oai(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        yield client


QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
# OpenAI's semantics (no repetition penalty): the tiny model needs the system line to stay brief.
BRIEF: list[ChatCompletionMessageParam] = [{"role": "system", "content": "Answer in one short sentence."}, *QUESTION]


def test_streaming_chat_answers_paris(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=BRIEF,
        stream=True,
        temperature=0.0,
        max_tokens=48,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_non_streaming_chat_returns_usage(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=BRIEF,
        temperature=0.0,
        max_tokens=48,
    )
    assert "Paris" in (completion.choices[0].message.content or "")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 5
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_text_completion(oai: openai.OpenAI) -> None:
    completion = oai.completions.create(model="gemma-3-270m", prompt="The sky is", max_tokens=8, temperature=0.0)
    assert completion.choices[0].text
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    streamed = "".join(
        c.choices[0].text
        for c in oai.completions.create(
            model="gemma-3-270m", prompt="The sky is", max_tokens=8, temperature=0.0, stream=True
        )
    )
    assert streamed == completion.choices[0].text  # temperature 0: same text either way


def test_unknown_model_is_404_in_the_openai_envelope(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        oai.chat.completions.create(model="gpt-9", messages=QUESTION)
    assert caught.value.code == "model_not_found"


def test_bad_parameter_is_422_naming_it(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        oai.chat.completions.create(model="smollm2-135m-instruct", messages=QUESTION, temperature=5)
    assert "temperature" in caught.value.message


def test_models_lists_the_registry_and_where_models_are_loaded(oai: openai.OpenAI) -> None:
    models = {m.id: m for m in oai.models.list()}
    assert {"gemma-3-270m", "smollm2-135m-instruct"} <= set(models)
    gemma = models["gemma-3-270m"].model_dump()
    assert gemma["role"] == "llm" and gemma["loaded"] is True
