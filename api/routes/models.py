"""`GET /v1/models`: the registry, in OpenAI's list shape, with where each model is loaded right now."""

from __future__ import annotations

import hashlib
import time

from fastapi import APIRouter

from api.deps import PrincipalDep, StateDep
from api.errors import MODEL_NOT_FOUND_MESSAGE, ModelNotFound, NotFound, PermissionDenied
from api.schemas import (
    ModelPublic,
    ModelsPublic,
    QueuePublic,
    QueuesPublic,
    VoicePublic,
    VoicesPublic,
    WorkerPublic,
    WorkersPublic,
)
from contract.catalog import CatalogEntry, ModelRole, registry
from contract.speech import OPENAI_VOICES
from jobstore import keys
from jobstore.adverts import WorkerInfo, live_workers
from jobstore.overview import queue_loads, worker_loads
from tasks.registry import QUEUES

router = APIRouter(prefix="/v1", tags=["models"])
DRAIN_FLAG_SECONDS = 86_400  # outlives any worker's notice of it; a worker drains once, then restarts


def _describe(entry: CatalogEntry, workers: list[WorkerInfo]) -> ModelPublic:
    loaded_on = [public_worker_id(w.id) for w in workers if entry.name in w.models]
    speaks = entry.role == ModelRole.tts
    return ModelPublic(
        id=entry.name,
        name=entry.name,  # the original API's ModelInfo: id, name, description
        role=entry.role,
        package=entry.package,
        description=entry.description,
        license=entry.license,
        loaded=bool(loaded_on),
        loaded_on=loaded_on,
        voices=list(entry.voices) if speaks else None,
        sample_rate=entry.sample_rate if speaks else None,
    )


@router.get("/models", response_model=ModelsPublic)
async def list_models(state: StateDep, _: PrincipalDep) -> ModelsPublic:
    """OpenAI's model list; `models` holds the same entries for clients of the original API."""
    workers = await live_workers(state.redis)
    described = [_describe(entry, workers) for entry in registry()]
    return ModelsPublic(data=described, models=described)


@router.get("/models/{model_id:path}", response_model=ModelPublic)
async def get_model(model_id: str, state: StateDep, _: PrincipalDep) -> ModelPublic:
    entry = registry().get(model_id)
    if entry is None:
        raise ModelNotFound(MODEL_NOT_FOUND_MESSAGE, param="model")
    return _describe(entry, await live_workers(state.redis))


@router.get("/audio/voices", response_model=VoicesPublic)
async def list_voices(state: StateDep, _: PrincipalDep) -> VoicesPublic:
    """Every voice offered offline, by engine; OpenAI voice names are served by the default engine."""
    models = registry()
    default = models.lookup(state.settings.tts_model, ModelRole.tts)
    voices = [
        VoicePublic(id=voice, model=entry.name, sample_rate=entry.sample_rate, default=index == 0)
        for entry in models.role(ModelRole.tts)
        for index, voice in enumerate(entry.voices)
    ]
    aliases = {
        name: name if name in default.voices or default.any_voice else default.voices[0] for name in OPENAI_VOICES
    }
    return VoicesPublic(data=voices, default_model=default.name, openai_voices=dict(sorted(aliases.items())))


@router.get("/workers", response_model=WorkersPublic)
async def list_workers(state: StateDep, _: PrincipalDep) -> WorkersPublic:
    """Live workers: the queues each serves, its device, the registered models it has loaded and when it
    started. Every key may read this, so nothing about the machines (host, pid, paths, ports) is in it."""
    loads = await worker_loads(state.redis, QUEUES)
    now = time.time()
    workers = [_public_worker(w, loads.get(w.id, (0, 0)), now) for w in await live_workers(state.redis)]
    return WorkersPublic(data=sorted(workers, key=lambda w: w.id))


@router.post("/workers/{worker_id}/drain", response_model=WorkerPublic, status_code=202)
async def drain_worker(worker_id: str, state: StateDep, principal: PrincipalDep) -> WorkerPublic:
    """Drain a worker without stopping it (operators only: OPERATOR_KEY_IDS, or anyone when keys are off): it
    takes no more jobs, gives the ones it runs WORKER_DRAIN_SECONDS (its own setting) to finish, then hands
    back the rest, which other workers take at once. It notices within a second; `draining` shows then. To
    serve again, restart it."""
    if state.settings.api_key_enabled and principal.id not in state.settings.operator_key_ids:
        raise PermissionDenied("draining a worker is for operators (OPERATOR_KEY_IDS)")
    workers = {public_worker_id(w.id): w for w in await live_workers(state.redis)}
    worker = workers.get(worker_id)
    if worker is None:
        raise NotFound(f"no live worker {worker_id[:64]!r}; GET /v1/workers lists them", param="worker_id")
    await state.redis.set(keys.drain(worker.id), "1", ex=DRAIN_FLAG_SECONDS)
    load = (await worker_loads(state.redis, QUEUES)).get(worker.id, (0, 0))
    public = _public_worker(worker, load, time.time())
    public.draining = True
    return public


@router.get("/queues", response_model=QueuesPublic)
async def list_queues(state: StateDep, principal: PrincipalDep) -> QueuesPublic:
    """Each queue's load now: its workers and their slots, the jobs running, admitted to the broker and
    waiting per tier; who waits, per API key: every key for an operator (OPERATOR_KEY_IDS, or everyone when
    keys are off), else only the caller's own line."""
    operator = not state.settings.api_key_enabled or principal.id in state.settings.operator_key_ids
    workers = await live_workers(state.redis)
    data = []
    for load in await queue_loads(state.redis, QUEUES, by_principal=True):
        waiting = load.principals if operator else {principal.id: load.principals.get(principal.id, 0)}
        data.append(
            QueuePublic(
                queue=load.queue,
                workers=sum(load.queue in w.queues for w in workers),
                slots=load.slots,
                running=load.running,
                admitted=load.admitted,
                waiting=load.waiting,
                principals=waiting,
            )
        )
    return QueuesPublic(data=data)


def public_worker_id(worker_id: str) -> str:
    """A worker's name for clients: stable while it lives, but not its `host:pid` id."""
    return "worker_" + hashlib.sha256(worker_id.encode()).hexdigest()[:12]


def _public_worker(worker: WorkerInfo, load: tuple[int, int], now: float) -> WorkerPublic:
    served = registry()
    return WorkerPublic(
        id=public_worker_id(worker.id),
        queues=worker.queues,
        device=worker.device,
        cuda_visible_devices=worker.cuda_visible_devices,
        # Registered names only, and never a path (LLM_MODEL may be one): a name is all a client can send.
        models=[name for name in worker.models if served.get(name) is not None and not _path_like(name)],
        started_at=worker.started_at,
        heartbeat_age_seconds=round(max(0.0, now - worker.heartbeat_at), 3) if worker.heartbeat_at else None,
        slots=load[0],
        busy=load[1],
        draining=worker.draining,
    )


def _path_like(name: str) -> bool:
    return name.startswith(("/", "~", ".")) or "\\" in name
