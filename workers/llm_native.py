"""llama.cpp through llama-cpp-python's low-level API: one model, one multi-sequence context, one batch.

Only the calls the batching engine needs, each wrapped once: loading and freeing, tokenizing, token
pieces, metadata, the context (one KV stream per sequence slot) and the token batch.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import llama_cpp as native

from contract.errors import ModelUnavailable

_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        native.llama_backend_init()
        # llama.cpp logs through llama-cpp-python's logger; keep it to errors, as `Llama(verbose=False)` does.
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        _backend_ready = True


def gpu_offload_supported() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())


class NativeModel:
    """A loaded GGUF and its vocabulary."""

    def __init__(self, path: Path, *, n_gpu_layers: int) -> None:
        _init_backend()
        params = native.llama_model_default_params()
        params.n_gpu_layers = 0x7FFFFFFF if n_gpu_layers == -1 else n_gpu_layers
        self.model = native.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise ModelUnavailable(f"llama.cpp could not load {path.name}")
        self.vocab = native.llama_model_get_vocab(self.model)
        self.n_vocab = int(native.llama_vocab_n_tokens(self.vocab))
        self.bos = int(native.llama_vocab_bos(self.vocab))
        self.eos = int(native.llama_vocab_eos(self.vocab))

    def close(self) -> None:
        if self.model:
            native.llama_model_free(self.model)
            self.model = None

    def tokenize(self, text: bytes, *, add_bos: bool, special: bool) -> list[int]:
        size = len(text) + 2
        tokens = (native.llama_token * size)()
        n = native.llama_tokenize(self.vocab, text, len(text), tokens, size, add_bos, special)
        if n < 0:  # the buffer was too small: -n is what it needs
            size = -n
            tokens = (native.llama_token * size)()
            n = native.llama_tokenize(self.vocab, text, len(text), tokens, size, add_bos, special)
        return list(tokens[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token (special tokens render as nothing unless `special`)."""
        buffer = ctypes.create_string_buffer(64)
        n = native.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = native.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, special)
        return buffer.raw[:n]

    def is_end_of_generation(self, token: int) -> bool:
        return bool(native.llama_vocab_is_eog(self.vocab, token))

    def metadata(self, key: str) -> str | None:
        size = 4096
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = native.llama_model_meta_val_str(self.model, key.encode(), buffer, size)
            if n < 0:
                return None
            if n < size:
                return buffer.value.decode(errors="replace")
            size = n + 1


class NativeContext:
    """A context with `n_seq` sequence slots, each with its own KV stream of `n_ctx_seq` cells."""

    def __init__(
        self,
        model: NativeModel,
        *,
        n_ctx_seq: int,
        n_seq: int,
        n_batch: int,
        n_threads: int,
        n_threads_batch: int,
        unified: bool = False,
    ) -> None:
        params = native.llama_context_default_params()
        params.n_ctx = n_ctx_seq * n_seq
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, 512)
        params.n_seq_max = n_seq
        # Sequences here share nothing: a stream each, so a token attends only its own cells.
        params.kv_unified = unified
        params.n_threads = n_threads
        params.n_threads_batch = n_threads_batch
        # What `Llama(flash_attn=False)` sets, so one generation decodes exactly as it did on the high-level API.
        params.flash_attn_type = native.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = native.llama_init_from_model(model.model, params)
        if not self.ctx:
            raise ModelUnavailable(f"llama.cpp could not create a context of {n_seq} × {n_ctx_seq} tokens")
        self.threads = n_threads
        self.memory = native.llama_get_memory(self.ctx)
        self.n_ctx_seq = int(native.llama_n_ctx_seq(self.ctx))
        self.n_batch = int(native.llama_n_batch(self.ctx))
        self.batch = native.llama_batch_init(self.n_batch, 0, 1)
        self.n_tokens = 0

    def close(self) -> None:
        if self.ctx:
            native.llama_batch_free(self.batch)
            native.llama_free(self.ctx)
            self.ctx = None

    def clear(self) -> None:
        self.n_tokens = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append a token to the batch; returns its index (where its logits will be, when asked for)."""
        i = self.n_tokens
        batch = self.batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits
        self.n_tokens = i + 1
        return i

    def use_threads(self, threads: int) -> None:
        """Decode (and process prompts) on `threads` threads from the next call on."""
        if threads != self.threads:
            native.llama_set_n_threads(self.ctx, threads, threads)
            self.threads = threads

    def decode(self) -> int:
        """Run the batch; 0 on success, llama_decode's status otherwise."""
        self.batch.n_tokens = self.n_tokens
        return int(native.llama_decode(self.ctx, self.batch))

    def forget(self, seq: int) -> None:
        """Drop a sequence's cells so its slot starts clean."""
        native.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def logits(self, index: int) -> Any:
        """A pointer to the logits of batch entry `index`, valid until the next decode."""
        return native.llama_get_logits_ith(self.ctx, index)
