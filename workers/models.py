"""`ModelCache`: the registered models a worker process has loaded, kept warm for later jobs, and bounded.

Models are cached by canonical registry name (so `whisper-1` and `whisper-tiny.en` share one copy), at
most MODEL_CACHE_SIZE of each role: beyond it the least recently used model that no job is using is
unloaded. A model loads under its own lock, so a slow load never holds up jobs on models already loaded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from config import Settings
from contract.catalog import CatalogEntry, ModelRole, UnknownModel, registry
from contract.errors import ModelUnavailable
from workers.engines import load
from workers.llm import LlmEngine
from workers.stt import RemoteWhisperEngine, WhisperEngine

if TYPE_CHECKING:
    from workers.openai_whisper import OpenAIWhisperEngine
    from workers.tts import HibariEngine, OpenAudioEngine, PiperEngine

SpeechEngine: TypeAlias = "WhisperEngine | OpenAIWhisperEngine | RemoteWhisperEngine"
VoiceEngine: TypeAlias = "HibariEngine | PiperEngine | OpenAudioEngine"

log = logging.getLogger(__name__)
REMOTE_STT = "openai-remote"  # the remote transcription API, when ENABLE_LOCAL_WHISPER is false


@dataclass
class _Held:
    engine: Any
    users: int = 0


class ModelCache:
    def __init__(self, settings: Settings, on_load: Callable[[str, float], None] | None = None) -> None:
        self.settings = settings
        self.on_load = on_load
        self._held: dict[ModelRole, OrderedDict[str, _Held]] = {role: OrderedDict() for role in ModelRole}
        self._lock = threading.Lock()  # guards `_held` and `_gates`; never held while a model loads
        self._gates: dict[str, threading.Lock] = {}

    @property
    def loaded(self) -> list[str]:
        with self._lock:
            return sorted(name for held in self._held.values() for name in held)

    @contextmanager
    def llm(self, name: str | None = None) -> Iterator[LlmEngine]:
        """A registered LLM (LLM_MODEL when none is named), held loaded while the block runs."""
        entry = _entry(name, ModelRole.llm)
        with self._use(ModelRole.llm, entry.name, lambda: load(entry, self.settings)) as engine:
            yield engine

    @contextmanager
    def stt(self, name: str | None = None) -> Iterator[SpeechEngine]:
        """The local Whisper model asked for, or the remote API when ENABLE_LOCAL_WHISPER is false."""
        if not self.settings.enable_local_whisper:
            with self._use(ModelRole.stt, REMOTE_STT, lambda: RemoteWhisperEngine(self.settings)) as remote:
                yield remote
            return
        entry = _entry(name, ModelRole.stt)
        with self._use(ModelRole.stt, entry.name, lambda: load(entry, self.settings)) as engine:
            yield engine

    @contextmanager
    def tts(self, name: str | None = None) -> Iterator[VoiceEngine]:
        """A text-to-speech engine by registry name or alias (TTS_MODEL when none is given)."""
        entry = _entry(name, ModelRole.tts)
        with self._use(ModelRole.tts, entry.name, lambda: load(entry, self.settings)) as engine:
            yield engine

    @contextmanager
    def _use(self, role: ModelRole, name: str, load: Callable[[], Any]) -> Iterator[Any]:
        held = self._acquire(role, name, load)
        try:
            yield held.engine
        finally:
            with self._lock:
                held.users -= 1
                unloaded = self._over_bound(role)
            _unload(unloaded)

    def _acquire(self, role: ModelRole, name: str, load: Callable[[], Any]) -> _Held:
        with self._lock:
            if (held := self._hold(role, name)) is not None:
                return held
            gate = self._gates.setdefault(name, threading.Lock())
        with gate:  # one load per model at a time; other models stay usable meanwhile
            with self._lock:
                if (held := self._hold(role, name)) is not None:
                    return held
            started = time.perf_counter()
            engine = load()
            seconds = time.perf_counter() - started
            log.info("model %s loaded in %.2fs", name, seconds)
            if self.on_load is not None:
                self.on_load(name, seconds)
            with self._lock:
                held = self._held[role][name] = _Held(engine, users=1)
                unloaded = self._over_bound(role)
        _unload(unloaded)
        return held

    def _hold(self, role: ModelRole, name: str) -> _Held | None:
        held = self._held[role].get(name)
        if held is not None:
            held.users += 1
            self._held[role].move_to_end(name)
        return held

    def _over_bound(self, role: ModelRole) -> list[tuple[str, Any]]:
        """Take the least recently used idle models beyond MODEL_CACHE_SIZE out of the cache."""
        models = self._held[role]
        idle = [name for name, held in models.items() if held.users == 0]
        excess = len(models) - self.settings.model_cache_size
        return [(name, models.pop(name).engine) for name in idle[: max(0, excess)]]


def _entry(name: str | None, role: ModelRole) -> CatalogEntry:
    try:
        return registry().lookup(name, role)
    except UnknownModel:  # the API refuses these; a job from an API with another registry lands here
        log.warning("a job names a %s model this worker's registry does not serve: %r", role.value, (name or "")[:100])
        raise ModelUnavailable(f"the {role.value} model the job names is not served by this worker") from None


def _unload(models: list[tuple[str, Any]]) -> None:
    for name, engine in models:
        close = getattr(engine, "close", None)
        if callable(close):
            close()
        log.info("model %s unloaded (MODEL_CACHE_SIZE)", name)
