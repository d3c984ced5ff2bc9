"""Continuous batching: one thread owns the llama.cpp context and decodes every running generation together.

Job threads `submit` a `Sequence` and read its events; the scheduler gives it a free slot (a sequence id
with its own KV stream), prefills its prompt in chunks of what each step's batch has left, then adds one
token per step until it ends. Between steps new sequences join and finished or cancelled ones leave, so
a long generation never makes a short one wait for it, and no prompt stalls the others for long.

    job thread ──submit──▶ waiting ──admit──▶ slot: prefill … decode … ──▶ done / error
        ◀──── text deltas ─────────────────────────┘       ▲ cancel() drops it at the next step
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from contract.errors import EngineError
from contract.generation import GenerationParams
from workers.llm_native import NativeContext, NativeModel
from workers.llm_sampling import SequenceSampler
from workers.llm_text import TextStream

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class Outcome:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass(eq=False)
class Sequence:
    """One generation as its job thread sees it: text deltas (str) arrive on `events`, then its `Outcome`
    or the exception that ended it."""

    tokens: list[int]
    params: GenerationParams
    stop: tuple[str, ...] = ()
    stop_tokens: frozenset[int] = frozenset()
    events: queue.SimpleQueue[str | Outcome | Exception] = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Leave the batch at the next step (the job was cancelled, timed out or lost)."""
        self.cancelled.set()


class Slot:
    """A sequence in the batch: where its prompt and its tokens are, and how it samples."""

    def __init__(self, seq_id: int, sequence: Sequence, model: NativeModel) -> None:
        self.seq_id = seq_id
        self.sequence = sequence
        self.sampler = SequenceSampler(sequence.params, model.n_vocab)
        self.text = TextStream(sequence.stop)
        self.prefilled = 0  # prompt tokens in the KV cache
        self.generated = 0  # tokens sampled so far (the last one is `next_token` until it is decoded)
        self.next_token: int | None = None  # sampled, to be decoded in the next step
        self.output = -1  # batch index whose logits this slot samples from after the step

    @property
    def prefilling(self) -> bool:
        return self.prefilled < len(self.sequence.tokens)

    @property
    def next_position(self) -> int:
        """Where `next_token` goes: right after the prompt and the tokens decoded before it."""
        return self.prefilled + self.generated - 1


class BatchScheduler(threading.Thread):
    def __init__(
        self,
        model: NativeModel,
        context: NativeContext,
        slots: int,
        name: str,
        threads: Callable[[], int] | None = None,
    ) -> None:
        """`threads`, when given, says before each decode how many threads it should use (`workers/cores.py`)."""
        super().__init__(name=f"speechq-llm-{name}", daemon=True)
        self.model = model
        self.context = context
        self.threads = threads
        self.slots: list[Slot | None] = [None] * slots
        self.waiting: deque[Sequence] = deque()
        self.wakeup = threading.Condition()
        self.closed = False
        self.steps = 0
        self._stepping_since: float | None = None

    def submit(self, sequence: Sequence) -> None:
        with self.wakeup:
            if self.closed:
                raise EngineError("the language model is shutting down")
            self.waiting.append(sequence)
            self.wakeup.notify()

    def close(self) -> None:
        with self.wakeup:
            self.closed = True
            self.wakeup.notify()
        self.join(timeout=30)

    @property
    def stalled_for(self) -> float:
        """Seconds the current step has run (0 between steps): a step takes milliseconds, so a long one
        means llama.cpp is stuck."""
        since = self._stepping_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def active(self) -> int:
        return sum(slot is not None for slot in self.slots)

    def run(self) -> None:
        while True:
            with self.wakeup:
                while not self.closed and not self.waiting and not self.active:
                    self.wakeup.wait()
                if self.closed:
                    break
                self._admit()
            self._stepping_since = time.monotonic()
            try:
                self._step()
            except Exception as exc:  # a bug or a broken context: fail what is running, keep serving
                log.exception("LLM batch step failed")
                for slot in [s for s in self.slots if s is not None]:
                    self._end(slot, error=EngineError(f"generation failed: {type(exc).__name__}"))
            finally:
                self._stepping_since = None
        for slot in [s for s in self.slots if s is not None]:
            self._end(slot, error=EngineError("the language model is shutting down"))
        for sequence in self.waiting:
            sequence.events.put(EngineError("the language model is shutting down"))

    def _admit(self) -> None:
        """Give waiting sequences the free slots (called with `wakeup` held); drop those already cancelled."""
        for seq_id, slot in enumerate(self.slots):
            while slot is None and self.waiting:
                sequence = self.waiting.popleft()
                if not sequence.cancelled.is_set():
                    self.context.forget(seq_id)
                    slot = self.slots[seq_id] = Slot(seq_id, sequence, self.model)

    def _decode(self) -> int:
        """llama_decode the batch, on as many threads as the worker's cores allow now."""
        if self.threads is not None:
            self.context.use_threads(self.threads())
        return self.context.decode()

    def _step(self) -> None:
        """One llama_decode: a token for every generating slot, then prompt chunks in what room is left."""
        for slot in self.slots:
            if slot is not None and slot.sequence.cancelled.is_set():
                self._end(slot, error=EngineError("cancelled"))
        running = [s for s in self.slots if s is not None]
        if not running:
            return
        context = self.context
        context.clear()
        for slot in running:
            if slot.next_token is not None:
                slot.output = context.add(slot.next_token, slot.next_position, slot.seq_id, True)
                slot.next_token = None
        room = context.n_batch - context.n_tokens
        for slot in running:  # in slot order: the earlier sequence finishes its prompt first
            if room <= 0:
                break
            if slot.prefilling:
                room -= self._prefill(slot, room)
        status = self._decode()
        self.steps += 1
        if status != 0:
            for slot in running:
                self._end(slot, error=EngineError(f"llama.cpp could not decode the batch (status {status})"))
            return
        for slot in running:
            if slot.output >= 0:
                index, slot.output = slot.output, -1
                token = slot.sampler.sample(context.ctx, index, context.logits(index))
                self._advance(slot, token)

    def _prefill(self, slot: Slot, room: int) -> int:
        prompt = slot.sequence.tokens
        chunk = prompt[slot.prefilled : slot.prefilled + room]
        last = len(prompt) - 1
        for offset, token in enumerate(chunk):
            pos = slot.prefilled + offset
            index = self.context.add(token, pos, slot.seq_id, pos == last)
            if pos == last:
                slot.output = index
        slot.prefilled += len(chunk)
        return len(chunk)

    def _advance(self, slot: Slot, token: int) -> None:
        sequence = slot.sequence
        if self.model.is_end_of_generation(token) or token in sequence.stop_tokens:
            self._end(slot, finish_reason="stop")
            return
        slot.generated += 1
        delta = slot.text.feed(self.model.piece(token))
        if delta:
            sequence.events.put(delta)
        if slot.text.stopped:
            self._end(slot, finish_reason="stop")
        elif slot.generated >= sequence.params.max_tokens:
            self._end(slot, finish_reason="length")
        else:
            slot.next_token = token

    def _end(self, slot: Slot, *, finish_reason: FinishReason = "stop", error: Exception | None = None) -> None:
        """Take the slot out of the batch, free its cells and sampler, and tell its job thread."""
        self.slots[slot.seq_id] = None
        self.context.forget(slot.seq_id)
        slot.sampler.close()
        if error is not None:
            slot.sequence.events.put(error)
            return
        tail = slot.text.finish()
        if tail:
            slot.sequence.events.put(tail)
        slot.sequence.events.put(Outcome(slot.text.text, finish_reason, len(slot.sequence.tokens), slot.generated))
