"""`ModelCache`: each model is loaded once per worker process and kept warm for every later job."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from config import Settings
from workers.errors import ModelUnavailable
from workers.llm import LlmEngine
from workers.registry import resolve_llm, resolve_stt
from workers.stt import RemoteWhisperEngine, WhisperEngine

if TYPE_CHECKING:
    from workers.openai_whisper import OpenAIWhisperEngine
    from workers.tts import HibariEngine, OpenAudioEngine, PiperEngine

SpeechEngine: TypeAlias = "WhisperEngine | OpenAIWhisperEngine | RemoteWhisperEngine"
VoiceEngine: TypeAlias = "HibariEngine | PiperEngine | OpenAudioEngine"

log = logging.getLogger(__name__)


class ModelCache:
    def __init__(self, settings: Settings, on_load: Callable[[str, float], None] | None = None) -> None:
        self.settings = settings
        self.on_load = on_load
        self._llms: dict[str, LlmEngine] = {}
        self._stts: dict[str, SpeechEngine] = {}
        self._ttss: dict[str, VoiceEngine] = {}
        self._lock = threading.Lock()

    @contextmanager
    def _loading(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        log.info("model %s loaded in %.2fs", name, seconds)
        if self.on_load is not None:
            self.on_load(name, seconds)

    @property
    def loaded(self) -> list[str]:
        return sorted([*self._llms, *self._stts, *self._ttss])

    def tts(self, name: str | None = None) -> VoiceEngine:
        """A text-to-speech engine by catalogue name (TTS_MODEL when none is given)."""
        name = name or self.settings.tts_model
        with self._lock:
            engine = self._ttss.get(name)
            if engine is None:
                engine = self._ttss[name] = self._load_tts(name)
            return engine

    def stt(self, name: str | None = None) -> SpeechEngine:
        """The local Whisper model asked for, or the remote API when ENABLE_LOCAL_WHISPER is false."""
        s = self.settings
        with self._lock:
            if not s.enable_local_whisper:
                engine = self._stts.get("remote")
                if engine is None:
                    engine = self._stts["remote"] = RemoteWhisperEngine(s)
                return engine
            name = name or s.local_whisper_model
            engine = self._stts.get(name)
            if engine is None:
                with self._loading(name):
                    engine = self._stts[name] = self._load_stt(name)
            return engine

    def _load_tts(self, name: str) -> VoiceEngine:
        from workers import tts

        with self._loading(name):
            if name == "hibari":
                return tts.HibariEngine(threads=self.settings.tts_n_threads)
            if name == "piper-en_US-joe-medium":
                return tts.PiperEngine()
            if name == "openaudio-s1-mini":
                return tts.OpenAudioEngine(self.settings)
        raise ModelUnavailable(f"no text-to-speech engine {name!r}")

    def _load_stt(self, name: str) -> SpeechEngine:
        s = self.settings
        if s.local_whisper_engine == "openai-whisper":
            from workers.openai_whisper import OpenAIWhisperEngine, find_checkpoint

            if name.endswith(".pt"):
                return OpenAIWhisperEngine(Path(name).stem, find_checkpoint(name, None, s.models_dir))
            model, path = resolve_stt(name, s.models_dir, s.local_whisper_model)
            return OpenAIWhisperEngine(model, find_checkpoint(model, path, s.models_dir))
        model, path = resolve_stt(name, s.models_dir, s.local_whisper_model)
        return WhisperEngine(model, path, cpu_threads=s.stt_n_threads)

    def llm(self, name: str | None = None) -> LlmEngine:
        name = name or self.settings.llm_model
        with self._lock:
            engine = self._llms.get(name)
            if engine is None:
                s = self.settings
                with self._loading(name):
                    engine = self._llms[name] = LlmEngine(
                        name,
                        resolve_llm(name, s.models_dir),
                        n_ctx=s.llm_n_ctx,
                        n_threads=s.llm_n_threads,
                        n_gpu_layers=s.llm_n_gpu_layers,
                        n_batch=s.llm_n_batch,
                        parallel=s.llm_parallel,
                    )
            return engine
