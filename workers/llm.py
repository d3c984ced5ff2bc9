"""`LlmEngine`: text generation on llama.cpp, many generations decoded together, each streamed as text deltas.

Prompts are built here: the GGUF's own chat template when it has one, else the Gemma 3 turn format
(`<start_of_turn>user … <end_of_turn>` then `<start_of_turn>model`), stopping at `<end_of_turn>`.
The decoding itself is `workers.llm_batch`'s: this module tokenizes, submits and follows.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from contract.errors import ContextOverflow, EngineStalled, InvalidJobInput, ModelUnavailable
from contract.generation import ChatMessage, GenerationParams

if TYPE_CHECKING:
    from workers.llm_batch import BatchScheduler
    from workers.llm_native import NativeContext, NativeModel

log = logging.getLogger(__name__)

GEMMA_END_OF_TURN = "<end_of_turn>"
GEMMA_START_OF_TURN = "<start_of_turn>"


class TokenSink(Protocol):
    def __call__(self, text: str, /) -> None: ...


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
    """One loaded GGUF model and the scheduler that decodes up to `parallel` generations of it at once.
    `generate` may be called from many threads; each call is one sequence in the shared batch."""

    def __init__(
        self,
        name: str,
        path: Path,
        *,
        n_ctx: int,
        n_threads: int | None,
        n_gpu_layers: int | None,
        n_batch: int,
        parallel: int = 1,
        stall_seconds: float = 120.0,
        gpu_visible: bool = True,
    ):
        try:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            from workers.cores import SHARE
            from workers.llm_batch import BatchScheduler
            from workers.llm_native import NativeContext, NativeModel, gpu_offload_supported
        except ImportError as exc:
            raise ModelUnavailable("this worker has no llama-cpp-python: pip install 'speechq[llm]'") from exc

        if n_gpu_layers is None:  # every layer on the GPU when there is one, none otherwise
            n_gpu_layers = -1 if gpu_offload_supported() and gpu_visible else 0
        self.name = name
        self.n_gpu_layers = n_gpu_layers
        self.stall_seconds = stall_seconds
        started = time.perf_counter()
        self._model: NativeModel = NativeModel(path, n_gpu_layers=n_gpu_layers)
        # LLM_N_THREADS fixes the threads; unset, they follow what else runs in this worker (`workers/cores.py`).
        threads = n_threads or SHARE.llm_threads()
        try:
            # Prompt processing gets the same threads as decoding (LLM_N_THREADS bounds both).
            self._context: NativeContext = NativeContext(
                self._model,
                n_ctx_seq=n_ctx,
                n_seq=parallel,
                n_batch=n_batch,
                n_threads=threads,
                n_threads_batch=threads,
            )
        except Exception:
            self._model.close()
            raise
        self.n_ctx = min(n_ctx, self._context.n_ctx_seq)
        self.load_seconds = time.perf_counter() - started
        # Special tokens detokenize to nothing, so a text stop sequence cannot catch a model that opens a
        # new turn instead of closing its own: stop on the token itself.
        turn = self._model.tokenize(GEMMA_START_OF_TURN.encode(), add_bos=False, special=True)
        self._gemma_stop = frozenset(turn) if len(turn) == 1 else frozenset()
        template = self._model.metadata("tokenizer.chat_template")
        self._formatter: Any = None
        if template:
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=self._token_text(self._model.eos),
                bos_token=self._token_text(self._model.bos),
            )
        self._scheduler: BatchScheduler = BatchScheduler(
            self._model, self._context, parallel, name, threads=None if n_threads else SHARE.llm_threads
        )
        self._scheduler.start()
        log.info(
            "loaded %s from %s in %.2fs (chat template: %s, %d slots of %d tokens)",
            name,
            path,
            self.load_seconds,
            bool(template),
            parallel,
            self.n_ctx,
        )

    def close(self) -> None:
        self._scheduler.close()
        self._context.close()
        self._model.close()

    def chat_prompt(self, messages: list[ChatMessage]) -> Prompt:
        if self._formatter is None:
            return Prompt(gemma_turns(messages), (GEMMA_END_OF_TURN,), add_bos=True, gemma_turns=True)
        formatted = self._formatter(messages=[m.model_dump() for m in messages])
        stop = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop]
        bos = self._token_text(self._model.bos)
        add_bos = not (bos and formatted.prompt.startswith(bos))
        return Prompt(formatted.prompt, tuple(s for s in stop if s), add_bos=add_bos)

    def _token_text(self, token: int) -> str:
        return "" if token < 0 else self._model.piece(token, special=True).decode(errors="ignore")

    def generate(
        self,
        prompt: Prompt,
        params: GenerationParams,
        on_text: TokenSink,
        check: Callable[[], None] | None = None,
        check_every: float = 0.25,
    ) -> Generation:
        """Stream a completion of `prompt`: `on_text` gets each delta; `check` is called at least every
        `check_every` seconds. Either may raise to stop the generation, which then leaves the batch."""
        from workers.llm_batch import Outcome, Sequence

        tokens = self._model.tokenize(prompt.text.encode(), add_bos=prompt.add_bos, special=True)
        if not tokens:
            raise InvalidJobInput("the prompt is empty once tokenized")
        if len(tokens) + params.max_tokens > self.n_ctx:
            raise ContextOverflow(
                f"the prompt has {len(tokens)} tokens; with max_tokens={params.max_tokens} that exceeds "
                f"this model's context window of {self.n_ctx} tokens per sequence (LLM_N_CTX)"
            )
        stop_tokens = self._gemma_stop if prompt.gemma_turns else frozenset()
        sequence = Sequence(tokens, params, stop=(*prompt.stop, *params.stop), stop_tokens=stop_tokens)
        started = time.perf_counter()
        first: float | None = None
        checked = time.monotonic()
        self._scheduler.submit(sequence)
        try:
            while True:
                try:
                    event = sequence.events.get(timeout=check_every)
                except queue.Empty:
                    event = None
                if isinstance(event, Exception):
                    raise event
                if isinstance(event, Outcome):
                    outcome = event
                    break
                if event:
                    first = first if first is not None else time.perf_counter() - started
                    on_text(event)
                if check is not None and time.monotonic() - checked >= check_every:
                    check()
                    checked = time.monotonic()
                if event is None and self._scheduler.stalled_for > self.stall_seconds:
                    raise EngineStalled(
                        f"the language model has not finished a decode step in {self.stall_seconds:g} s "
                        "(LLM_STALL_SECONDS); this worker restarts"
                    )
        except BaseException:
            sequence.cancel()
            raise
        return Generation(
            text=outcome.text,
            finish_reason=outcome.finish_reason,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            seconds=time.perf_counter() - started,
            first_token_seconds=first,
        )
