"""`ModelCache`: each model is loaded once per worker process and kept warm for every later job."""

from __future__ import annotations

import logging
import threading

from config import Settings
from workers.llm import LlmEngine
from workers.registry import resolve_llm

log = logging.getLogger(__name__)


class ModelCache:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._llms: dict[str, LlmEngine] = {}
        self._lock = threading.Lock()

    @property
    def loaded(self) -> list[str]:
        return sorted(self._llms)

    def llm(self, name: str | None = None) -> LlmEngine:
        name = name or self.settings.llm_model
        with self._lock:
            engine = self._llms.get(name)
            if engine is None:
                s = self.settings
                engine = LlmEngine(
                    name,
                    resolve_llm(name, s.models_dir),
                    n_ctx=s.llm_n_ctx,
                    n_threads=s.llm_n_threads,
                    n_gpu_layers=s.llm_n_gpu_layers,
                    n_batch=s.llm_n_batch,
                )
                self._llms[name] = engine
            return engine
