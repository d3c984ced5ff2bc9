"""What a worker process does before anything else: native libraries in a safe order, crash reports on.

With llama.cpp built for CUDA, a process that had loaded PyAV's bundled FFmpeg libraries before
llama.cpp's died with SIGSEGV in its first model load (a C++ runtime symbol resolved into the wrong
library; `../shared/gpu/README.md`). Loading llama.cpp's libraries first is the fix, so a worker that may
serve `llm` imports `llama_cpp` before any module that imports `av`, and refuses to start otherwise.
"""

from __future__ import annotations

import faulthandler
import importlib.util
import sys

from config import environment


class ImportOrderError(RuntimeError):
    """PyAV was loaded before llama.cpp in a process that will load a language model."""


def first_loaded(*modules: str) -> str | None:
    """Which of `modules` was imported first in this process (sys.modules keeps import order), if any."""
    for name in sys.modules:
        if name in modules:
            return name
    return None


def load_llama_first() -> None:
    """Import llama.cpp's libraries now, before PyAV; raises if PyAV got here first."""
    if importlib.util.find_spec("llama_cpp") is None:
        return  # no `llm` extra: jobs fail with model_unavailable, nothing to order
    import llama_cpp  # noqa: F401  (the import is the point: it loads libllama and libggml)

    if first_loaded("av", "llama_cpp") != "llama_cpp":
        raise ImportOrderError(
            "PyAV (FFmpeg) was imported before llama.cpp in a worker that serves `llm`; on CUDA builds the "
            "first model load then crashes (SIGSEGV). Call workers.startup.prepare_worker before importing "
            "anything that imports av."
        )


RESTART_EXIT_CODE = 75  # EX_TEMPFAIL: "start me again"; a worker whose engine got stuck exits with it


def prepare_worker(queues: list[str]) -> None:
    """Call first thing in a worker process: a fatal signal prints a traceback to the log, Hugging Face
    libraries stay offline, and a worker serving `llm` has llama.cpp loaded before PyAV."""
    faulthandler.enable(file=sys.stderr, all_threads=True)
    # Workers never download while serving: models come prepared (`speechq models prepare`).
    environment.stay_offline()
    if "llm" in queues:
        load_llama_first()
