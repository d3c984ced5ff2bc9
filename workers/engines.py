"""The engines a worker can run, one row each: its name, the role it serves, the devices it runs on, and how
it is loaded from a registry entry. A catalogue entry names its engine (`CatalogEntry.engine_name`; speech to
text runs on the one LOCAL_WHISPER_ENGINE names); adding an engine is a row here and a module beside it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from config import Settings
from contract.catalog import CatalogEntry, ModelRole
from contract.errors import ModelUnavailable
from workers.weights import locate


@dataclass(frozen=True, slots=True)
class Engine:
    name: str
    role: ModelRole
    devices: tuple[str, ...]  # "cpu", "cuda"; "remote": it runs on another server, this worker only calls it
    load: Callable[[CatalogEntry, Settings], Any]


def _llama_cpp(entry: CatalogEntry, s: Settings) -> Any:
    from workers.llm import LlmEngine

    options = entry.options
    return LlmEngine(
        entry.name,
        locate(entry, s.models_dir),
        n_ctx=options.get("n_ctx", s.llm_n_ctx),
        n_threads=s.llm_n_threads,
        n_gpu_layers=options.get("n_gpu_layers", s.llm_n_gpu_layers),
        n_batch=options.get("n_batch", s.llm_n_batch),
        parallel=s.llm_parallel,
        stall_seconds=s.llm_stall_seconds,
        gpu_visible=s.cuda_visible_devices not in ("", "-1"),
    )


def _faster_whisper(entry: CatalogEntry, s: Settings) -> Any:
    from workers.stt import WhisperEngine

    return WhisperEngine(
        entry.name,
        locate(entry, s.models_dir),
        cpu_threads=s.stt_n_threads,
        batch_size=s.stt_batch_size,
        lanes=s.stt_lanes,
        compute_type=s.stt_compute_type,
    )


def _openai_whisper(entry: CatalogEntry, s: Settings) -> Any:
    from workers.openai_whisper import OpenAIWhisperEngine, find_checkpoint

    path = locate(entry, s.models_dir)
    checkpoint = path if path.suffix == ".pt" else find_checkpoint(entry.name, path, s.models_dir)
    return OpenAIWhisperEngine(entry.name, checkpoint)


def _hibari(_entry: CatalogEntry, s: Settings) -> Any:
    from workers.tts import HibariEngine

    return HibariEngine(threads=s.tts_n_threads)


def _piper(_entry: CatalogEntry, _s: Settings) -> Any:
    from workers.tts import PiperEngine

    return PiperEngine()


def _openaudio(_entry: CatalogEntry, s: Settings) -> Any:
    from workers.tts import OpenAudioEngine

    return OpenAudioEngine(s)


ENGINES: dict[str, Engine] = {
    engine.name: engine
    for engine in (
        Engine("llama.cpp", ModelRole.llm, ("cpu", "cuda"), _llama_cpp),
        Engine("faster-whisper", ModelRole.stt, ("cpu", "cuda"), _faster_whisper),
        Engine("openai-whisper", ModelRole.stt, ("cpu", "cuda"), _openai_whisper),
        Engine("hibari", ModelRole.tts, ("cpu",), _hibari),
        Engine("piper", ModelRole.tts, ("cpu",), _piper),
        Engine("openaudio", ModelRole.tts, ("remote",), _openaudio),
    )
}


def engine_for(entry: CatalogEntry, settings: Settings) -> Engine:
    """The engine that runs `entry` on this worker; `ModelUnavailable` when there is none for it."""
    name = settings.local_whisper_engine if entry.role == ModelRole.stt else entry.engine_name
    engine = ENGINES.get(name)
    if engine is None or engine.role != entry.role:
        raise ModelUnavailable(f"no {entry.role.value} engine {name!r} for {entry.name}")
    return engine


def load(entry: CatalogEntry, settings: Settings) -> Any:
    return engine_for(entry, settings).load(entry, settings)
