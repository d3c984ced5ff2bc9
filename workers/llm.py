"""`LlmEngine`: text generation on llama-cpp-python, streamed one text delta at a time.

Prompts are built here: the GGUF's own chat template when it has one, else the Gemma 3 turn format
(`<start_of_turn>user … <end_of_turn>` then `<start_of_turn>model`), stopping at `<end_of_turn>`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from tasks.payloads import ChatMessage, GenerationParams
from workers.errors import ContextOverflow, ModelUnavailable

log = logging.getLogger(__name__)

GEMMA_END_OF_TURN = "<end_of_turn>"
GEMMA_START_OF_TURN = "<start_of_turn>"


class TokenSink(Protocol):
    def __call__(self, text: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str
    stop: tuple[str, ...]
    add_bos: bool
    gemma_turns: bool = False


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    first_token_seconds: float | None


def gemma_turns(messages: list[ChatMessage]) -> str:
    """The Gemma 3 turn format; Gemma has no system role, so a system message leads the first user turn."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    turns: list[str] = []
    for message in (m for m in messages if m.role != "system"):
        content = message.content
        if system and message.role == "user":
            content, system = f"{system}\n\n{content}", ""
        role = "model" if message.role == "assistant" else "user"
        turns.append(f"<start_of_turn>{role}\n{content}{GEMMA_END_OF_TURN}\n")
    return "".join(turns) + "<start_of_turn>model\n"


class LlmEngine:
    """One loaded GGUF model. llama.cpp's context is not thread-safe: generations on one engine take
    turns (a worker with several threads still runs speech jobs beside a generation)."""

    def __init__(
        self, name: str, path: Path, *, n_ctx: int, n_threads: int | None, n_gpu_layers: int | None, n_batch: int
    ):
        self._busy = threading.Lock()
        try:
            from llama_cpp import Llama
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as exc:
            raise ModelUnavailable("this worker has no llama-cpp-python: pip install 'speechq[llm]'") from exc
        from llama_cpp import StoppingCriteriaList, llama_supports_gpu_offload

        if n_gpu_layers is None:  # every layer on the GPU when there is one, none otherwise
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset") not in ("", "-1")
            n_gpu_layers = -1 if llama_supports_gpu_offload() and visible else 0
        self.n_gpu_layers = n_gpu_layers
        started = time.perf_counter()
        self.name = name
        self._llm = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_gpu_layers=n_gpu_layers,
            n_batch=n_batch,
            verbose=False,
        )
        self.load_seconds = time.perf_counter() - started
        # Special tokens detokenize to nothing, so a text stop sequence cannot catch a model that opens a
        # new turn instead of closing its own: stop on the token itself.
        turn = self._llm.tokenize(GEMMA_START_OF_TURN.encode(), add_bos=False, special=True)
        self._gemma_stop = StoppingCriteriaList([lambda ids, _logits: len(turn) == 1 and ids[-1] == turn[0]])
        self.n_ctx = n_ctx
        template = self._llm.metadata.get("tokenizer.chat_template")
        self._formatter: Any = None
        if template:
            vocab = self._llm
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=self._token_text(vocab.token_eos()),
                bos_token=self._token_text(vocab.token_bos()),
            )
        log.info("loaded %s from %s in %.2fs (chat template: %s)", name, path, self.load_seconds, bool(template))

    @property
    def has_chat_template(self) -> bool:
        return self._formatter is not None

    def chat_prompt(self, messages: list[ChatMessage]) -> Prompt:
        if self._formatter is None:
            return Prompt(gemma_turns(messages), (GEMMA_END_OF_TURN,), add_bos=True, gemma_turns=True)
        formatted = self._formatter(messages=[m.model_dump() for m in messages])
        stop = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop]
        bos = self._token_text(self._llm.token_bos())
        add_bos = not (bos and formatted.prompt.startswith(bos))
        return Prompt(formatted.prompt, tuple(s for s in stop if s), add_bos=add_bos)

    def _token_text(self, token: int) -> str:
        return "" if token < 0 else self._llm.detokenize([token], special=True).decode(errors="ignore")

    def generate(self, prompt: Prompt, params: GenerationParams, on_text: TokenSink) -> Generation:
        """Stream a completion of `prompt`; `on_text` gets each delta and may raise to stop early."""
        with self._busy:
            return self._generate(prompt, params, on_text)

    def _generate(self, prompt: Prompt, params: GenerationParams, on_text: TokenSink) -> Generation:
        tokens = self._llm.tokenize(prompt.text.encode(), add_bos=prompt.add_bos, special=True)
        if len(tokens) + params.max_tokens > self.n_ctx:
            raise ContextOverflow(
                f"the prompt has {len(tokens)} tokens; with max_tokens={params.max_tokens} that exceeds "
                f"this model's context window of {self.n_ctx} tokens (LLM_N_CTX)"
            )
        started = time.perf_counter()
        first: float | None = None
        pieces: list[str] = []
        finish_reason = "length"
        for chunk in self._stream(tokens, prompt, params):
            choice = chunk["choices"][0]
            if choice["text"]:
                first = first if first is not None else time.perf_counter() - started
                pieces.append(choice["text"])
                on_text(choice["text"])
            if choice.get("finish_reason"):
                finish_reason = choice["finish_reason"]
        text = "".join(pieces)
        completion_tokens = len(self._llm.tokenize(text.encode(), add_bos=False, special=False)) if text else 0
        return Generation(
            text=text,
            finish_reason=finish_reason,
            prompt_tokens=len(tokens),
            completion_tokens=completion_tokens,
            seconds=time.perf_counter() - started,
            first_token_seconds=first,
        )

    def _stream(self, tokens: list[int], prompt: Prompt, params: GenerationParams) -> Iterator[dict[str, Any]]:
        stream = self._llm.create_completion(
            tokens,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            min_p=params.min_p,
            typical_p=params.typical_p,
            repeat_penalty=params.repeat_penalty,
            stop=[*prompt.stop, *params.stop] or None,
            seed=params.seed,
            stopping_criteria=self._gemma_stop if prompt.gemma_turns else None,
            stream=True,
        )
        return cast(Iterator[dict[str, Any]], stream)
