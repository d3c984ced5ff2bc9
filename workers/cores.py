"""A worker's cores, shared by what is running in it (issue 26).

llama.cpp can change its thread count between two decode calls; CTranslate2 and onnxruntime fix theirs when a
model loads. So llama.cpp is the engine that adapts: when LLM_N_THREADS is unset it decodes on every core
while it is the only engine at work in this process, and on half of them while a transcription or a
synthesis runs beside it (ggml's threads spin at barriers: two engines each holding every core slow both).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def usable_cores() -> int:
    """The cores this process may run on (its affinity, as `taskset` or a container's cpuset sets it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class CoreShare:
    def __init__(self, cores: int) -> None:
        self.cores = cores
        self._others = 0  # jobs of the other engines running now
        self._lock = threading.Lock()

    @contextmanager
    def other_engine(self) -> Iterator[None]:
        """A transcription or a synthesis runs in this process for the duration of the block."""
        with self._lock:
            self._others += 1
        try:
            yield
        finally:
            with self._lock:
                self._others -= 1

    def llm_threads(self) -> int:
        """The threads llama.cpp should decode with now."""
        return self.cores if self._others == 0 else max(1, self.cores // 2)


SHARE = CoreShare(usable_cores())
