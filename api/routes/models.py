"""`GET /v1/models`: the registry, in OpenAI's list shape, with where each model is loaded right now."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter

from api.deps import PrincipalDep, StateDep
from api.errors import ModelNotFound
from tasks.catalog import CATALOG, CatalogEntry, ModelRole
from tasks.registry import WorkerInfo, live_workers
from tasks.speech import OPENAI_VOICES

router = APIRouter(prefix="/v1", tags=["models"])


def _describe(entry: CatalogEntry, workers: list[WorkerInfo]) -> dict[str, Any]:
    loaded_on = [w.id for w in workers if entry.name in w.models]
    speech = {"voices": list(entry.voices), "sample_rate": entry.sample_rate} if entry.role == ModelRole.tts else {}
    return {
        "id": entry.name,
        "object": "model",
        "created": 0,
        "owned_by": "speechq",
        "role": entry.role.value,
        "package": entry.package,
        "description": entry.description,
        "license": entry.license,
        "loaded": bool(loaded_on),
        "loaded_on": loaded_on,
        **speech,
    }


@router.get("/models")
async def list_models(state: StateDep, _: PrincipalDep) -> dict[str, Any]:
    workers = await live_workers(state.redis)
    return {"object": "list", "data": [_describe(entry, workers) for entry in CATALOG.values()]}


@router.get("/models/{model_id}")
async def get_model(model_id: str, state: StateDep, _: PrincipalDep) -> dict[str, Any]:
    entry = CATALOG.get(model_id)
    if entry is None:
        raise ModelNotFound(f"The model `{model_id}` does not exist", param="model")
    return _describe(entry, await live_workers(state.redis))


@router.get("/audio/voices")
async def list_voices(state: StateDep, _: PrincipalDep) -> dict[str, Any]:
    """Every voice offered offline, by engine; OpenAI voice names are served by the default engine."""
    default = CATALOG[state.settings.tts_model]
    voices = [
        {"id": voice, "model": entry.name, "sample_rate": entry.sample_rate, "default": index == 0}
        for entry in CATALOG.values()
        if entry.role == ModelRole.tts
        for index, voice in enumerate(entry.voices)
    ]
    aliases = {
        name: name if name in default.voices or default.any_voice else default.voices[0] for name in OPENAI_VOICES
    }
    return {
        "object": "list",
        "data": voices,
        "default_model": default.name,
        "openai_voices": dict(sorted(aliases.items())),
    }


@router.get("/workers")
async def list_workers(state: StateDep, _: PrincipalDep) -> dict[str, Any]:
    """Live workers: host, pid, queues, device (and CUDA_VISIBLE_DEVICES as each process sees it), models."""
    workers = sorted(await live_workers(state.redis), key=lambda w: w.id)
    return {"object": "list", "data": [asdict(w) for w in workers]}
