"""Per-sequence sampling: llama.cpp's sampler chain, with the repetition penalties applied beside it.

llama.cpp's penalties sampler looks every candidate up in a hash map: over Gemma 3's 262k-token
vocabulary that cost about half the decode rate on a GPU. `Penalties` does the same arithmetic (in
float32, in the same order) on only the logits of the tokens in its window, in place, before the chain
reads them, so the chain that follows sees exactly what it would have seen after llama.cpp's sampler.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from typing import Any

import numpy as np
from llama_cpp import llama_cpp as native

from contract.generation import GenerationParams

PENALTY_LAST_N = 64  # llama-cpp-python's `last_n_tokens_size`: the window the old engine penalised


class Penalties:
    """Repeat, frequency and presence penalties over the last `last_n` generated tokens."""

    def __init__(self, repeat: float, frequency: float, presence: float, n_vocab: int, last_n: int = PENALTY_LAST_N):
        self.repeat = np.float32(repeat)
        self.frequency = np.float32(frequency)
        self.presence = np.float32(presence)
        self.n_vocab = n_vocab
        self.window: deque[int] = deque(maxlen=last_n)
        self.counts: Counter[int] = Counter()
        self.off = last_n == 0 or (repeat == 1.0 and frequency == 0.0 and presence == 0.0)

    def accept(self, token: int) -> None:
        if self.off:
            return
        if len(self.window) == self.window.maxlen:
            evicted = self.window[0]
            self.counts[evicted] -= 1
            if not self.counts[evicted]:
                del self.counts[evicted]
        self.window.append(token)
        self.counts[token] += 1

    def apply(self, logits_pointer: Any) -> None:
        if self.off or not self.counts:
            return
        logits = np.ctypeslib.as_array(logits_pointer, shape=(self.n_vocab,))
        ids = np.fromiter(self.counts.keys(), dtype=np.int64, count=len(self.counts))
        counts = np.fromiter(self.counts.values(), dtype=np.float32, count=len(self.counts))
        values = logits[ids]
        values = np.where(values <= 0, values * self.repeat, values / self.repeat).astype(np.float32)
        values -= counts * self.frequency + (counts > 0).astype(np.float32) * self.presence
        logits[ids] = values


class SequenceSampler:
    """The sampling of one generation: penalties, then greedy (temperature 0) or top-k, typical, top-p,
    min-p, temperature and a seeded draw — the chain llama-cpp-python's `Llama` builds."""

    def __init__(self, params: GenerationParams, n_vocab: int) -> None:
        self.penalties = Penalties(params.repeat_penalty, params.frequency_penalty, params.presence_penalty, n_vocab)
        self.chain = native.llama_sampler_chain_init(native.llama_sampler_chain_default_params())
        if params.temperature == 0.0:
            self._add(native.llama_sampler_init_greedy())
        else:
            seed = params.seed if params.seed is not None else random.randrange(2**32 - 1)
            self._add(native.llama_sampler_init_top_k(params.top_k))
            self._add(native.llama_sampler_init_typical(params.typical_p, 1))
            self._add(native.llama_sampler_init_top_p(params.top_p, 1))
            self._add(native.llama_sampler_init_min_p(params.min_p, 1))
            self._add(native.llama_sampler_init_temp(params.temperature))
            self._add(native.llama_sampler_init_dist(seed))

    def _add(self, sampler: Any) -> None:
        native.llama_sampler_chain_add(self.chain, sampler)

    def sample(self, ctx: Any, index: int, logits_pointer: Any) -> int:
        """Pick the next token from batch entry `index`'s logits (which this modifies in place)."""
        self.penalties.apply(logits_pointer)
        token = int(native.llama_sampler_sample(self.chain, ctx, index))
        self.penalties.accept(token)
        return token

    def close(self) -> None:
        if self.chain is not None:
            native.llama_sampler_free(self.chain)
            self.chain = None
