"""`GET /v1/models`: the registry, in OpenAI's list shape, with where each model is loaded right now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import PrincipalDep, StateDep
from api.errors import ModelNotFound
from tasks.catalog import CATALOG, CatalogEntry
from tasks.registry import WorkerInfo, live_workers

router = APIRouter(prefix="/v1", tags=["models"])


def _describe(entry: CatalogEntry, workers: list[WorkerInfo]) -> dict[str, Any]:
    loaded_on = [w.id for w in workers if entry.name in w.models]
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
