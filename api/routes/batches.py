"""OpenAI's Batch API: upload a JSONL of requests (`api/routes/files.py`), run each as a job, collect the answers.

Batches serve `/v1/chat/completions`, `/v1/completions` and `/v1/audio/transcriptions`; a transcription
line names its audio as an uploaded file (`"file": "file-…"`). A batch whose lines do not validate ends
`failed` with an error per bad line; otherwise every line becomes a job at once (all or none, counted
against the key's MAX_ACTIVE_JOBS_PER_KEY and storage quota) and the batch is `in_progress`. The API's
batch sweeper (`api/batch_sweeper.py`) brings it up to date as its jobs end: once all have, the answers
are written to an output file (and failures to an error file) and the batch is `completed` — or
`cancelled`, or `expired` after its 24 h window. These routes only read and answer: `api/batch_service.py`
owns every change of a batch, and a batch read here may lag its jobs by up to BATCH_SWEEP_INTERVAL_SECONDS.
"""

from __future__ import annotations

from fastapi import APIRouter

from api.batch_lines import ENDPOINTS, BatchCreate
from api.batch_schemas import BatchesPublic, BatchPublic
from api.deps import BatchServiceDep, PrincipalDep, RequestIdDep, StateDep
from api.errors import NotFound, Unprocessable
from api.intake.jobs import checked_webhook, refusals

router = APIRouter(prefix="/v1", tags=["OpenAI compatible"])


@router.post("/batches", response_model=BatchPublic)
async def create_batch(
    body: BatchCreate, state: StateDep, service: BatchServiceDep, principal: PrincipalDep, rid: RequestIdDep
) -> BatchPublic:
    if body.endpoint not in ENDPOINTS:
        raise Unprocessable(f"endpoint: batches serve {', '.join(ENDPOINTS)}", param="endpoint")
    webhook = await checked_webhook(state, body)
    # Over MAX_ACTIVE_JOBS_PER_KEY a 429, over QUEUE_MAX_DEPTH a 503, over the storage quota a 413: nothing queued.
    with refusals(state):
        batch = await service.create(principal.id, body, request_id=rid, webhook=webhook)
    if batch["status"] == "in_progress":
        state.metrics.jobs_created.labels(ENDPOINTS[body.endpoint].value).inc(batch["request_counts"]["total"])
    return BatchPublic.model_validate(batch)


@router.get("/batches/{batch_id}", response_model=BatchPublic)
async def get_batch(batch_id: str, service: BatchServiceDep, principal: PrincipalDep) -> BatchPublic:
    batch = await service.get(batch_id, principal.id)
    if batch is None:
        raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
    return BatchPublic.model_validate(batch)


@router.post("/batches/{batch_id}/cancel", response_model=BatchPublic)
async def cancel_batch(batch_id: str, service: BatchServiceDep, principal: PrincipalDep) -> BatchPublic:
    batch = await service.cancel(batch_id, principal.id)
    if batch is None:
        raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
    return BatchPublic.model_validate(batch)


@router.get("/batches", response_model=BatchesPublic)
async def list_batches(service: BatchServiceDep, principal: PrincipalDep, limit: int = 20) -> BatchesPublic:
    data = [BatchPublic.model_validate(batch) for batch in await service.recent(principal.id, max(1, min(limit, 100)))]
    return BatchesPublic(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None)
