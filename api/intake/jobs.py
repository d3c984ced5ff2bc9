"""A new job and its answer: submitting (tier, quotas, refusals as API errors), answering 202, following its
events and waiting for it. Shared by every route that creates a job."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.exceptions import RedisError
from starlette.websockets import WebSocketDisconnect

from api.auth import Principal
from api.errors import (
    ClientGone,
    GatewayTimeout,
    NotFound,
    QueueFullError,
    QuotaExceeded,
    RequestTooLarge,
    StorageQuotaExceeded,
    Unprocessable,
    raise_for_failure,
)
from api.schemas import job_created
from api.state import AppState
from api.webhooks.urls import RefusedUrl
from config import Settings
from contract.dialogue import DialogueRequest
from contract.generation import GenerationParams, with_defaults
from contract.jobs import JobKind, JobRecord, JobStatus, ServiceTier
from contract.webhooks import WEBHOOK_EVENTS, WebhookFields
from jobstore.creation import Allowance, IdempotencyConflict, OversizedRequest, QueueFull, TooManyActive
from jobstore.event_log import Event, read_events
from jobstore.storage import OverStorageQuota
from jobstore.store import JobStore
from jobstore.webhooks import Webhook
from tasks.scheduler import resolve_tier

log = logging.getLogger(__name__)
PLACE_SECONDS = 1.0  # how often a followed queued job's place in line is looked at
DISCONNECT_SECONDS = 0.25  # how often a blocking route looks whether its client is still there

# A request that names no tier gets its route's, else its key's default: a person waits on every stage of
# a dialogue.
ROUTE_TIER = {JobKind.dialogue: ServiceTier.priority}


async def submit(
    state: AppState,
    kind: JobKind,
    payload: BaseModel | dict[str, Any],
    principal: Principal,
    *,
    request_id: str | None = None,
    idempotency_key: str | None = None,
    input_file: bytes | None = None,
    max_active: int | None = None,
) -> tuple[JobRecord, bool]:
    """Create and enqueue a job; returns it and whether an Idempotency-Key replayed an existing one.

    A generation request gets the operator's defaults (LLM_MAX_TOKENS, LLM_TEMPERATURE, …) for what it
    left out, whichever route it came by. Its `service_tier` is resolved against the key's policy
    (`API_KEY_POLICIES`) and the job waits in the scheduler at that tier as the key's.
    """
    payload = with_operator_defaults(payload, state.settings)
    policy = state.settings.key_policy(principal.id)
    requested = payload.get("service_tier") if isinstance(payload, dict) else getattr(payload, "service_tier", None)
    tier = resolve_tier(requested, policy, route_default=ROUTE_TIER.get(kind))
    webhook = await checked_webhook(state, payload) if isinstance(payload, WebhookFields) else None
    with refusals(state):
        created = await state.store.create(
            kind,
            payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload,
            owner=principal.id,
            request_id=request_id,
            idempotency_key=idempotency_key,
            input_file=input_file,
            max_active=max_active,
            allowance=Allowance.of(state.settings, principal.id),
            tier=tier,
            principal=principal.id,
            weight=policy.weight,
            webhook=webhook,
        )
    if not created.replayed:
        state.metrics.jobs_created.labels(kind.value).inc()
    return created.job, created.replayed


async def checked_webhook(state: AppState, fields: WebhookFields) -> Webhook | None:
    """The request's webhook, if it asks for one, once its URL is allowed (`api/webhooks/urls.py`): a URL the
    server would refuse to call is a 422 naming `webhook_url` now, never a silent drop later."""
    if fields.webhook_url is None:
        if fields.webhook_events is not None:
            raise Unprocessable("webhook_events: given without a webhook_url", param="webhook_events")
        return None
    try:
        await state.webhooks.target(fields.webhook_url)
    except RefusedUrl as exc:
        raise Unprocessable(f"webhook_url: {exc}", param="webhook_url") from None
    except OSError as exc:
        raise Unprocessable(f"webhook_url: its host does not resolve ({exc})", param="webhook_url") from None
    events = tuple(dict.fromkeys(fields.webhook_events)) if fields.webhook_events else WEBHOOK_EVENTS
    return Webhook(fields.webhook_url, events)


P = TypeVar("P", bound=BaseModel | dict[str, Any])


def with_operator_defaults(payload: P, settings: Settings) -> P:
    """The operator's generation defaults (LLM_MAX_TOKENS, LLM_TEMPERATURE, …) for what a request left out,
    whichever route it came by: a generation's own fields, a dialogue's generation config. The one place
    they are applied (`submit`, and the batch planner for its lines)."""
    defaults = settings.generation_defaults
    if isinstance(payload, GenerationParams):
        return with_defaults(payload, defaults)
    if isinstance(payload, DialogueRequest):
        return payload.model_copy(update={"generation_config": with_defaults(payload.generation_config, defaults)})
    return payload


@contextmanager
def refusals(state: AppState) -> Iterator[None]:
    """The job store's refusals as the API's errors."""
    try:
        yield
    except QueueFull as exc:
        state.metrics.rejections.labels("queue").inc()
        raise QueueFullError(str(exc), headers={"Retry-After": "5"}) from exc
    except TooManyActive as exc:
        state.metrics.rejections.labels("quota").inc()
        raise QuotaExceeded(str(exc), headers={"Retry-After": "5"}) from exc
    except OverStorageQuota as exc:
        state.metrics.rejections.labels("storage").inc()
        raise StorageQuotaExceeded(str(exc)) from exc
    except OversizedRequest as exc:
        raise RequestTooLarge(str(exc)) from exc
    except IdempotencyConflict as exc:
        raise Unprocessable(str(exc), param="Idempotency-Key") from exc


async def follow(state: AppState, job_id: str, *, after: str | None = None) -> AsyncIterator[Event]:
    """The job's events (`read_events`); while it is queued and followed, a `queued` event again each time
    its place in line changes (at most once a second)."""
    announcer = asyncio.create_task(announce_place(state.store, job_id), name=f"speechq-place-{job_id}")
    try:
        async for event in read_events(state.redis, state.hub, job_id, after=after):
            yield event
    finally:
        announcer.cancel()


async def announce_place(store: JobStore, job_id: str) -> None:
    try:
        while True:  # a poll, not a wait on an event: the place changes as other jobs move
            if not await store.announce_place(job_id):
                return
            await asyncio.sleep(PLACE_SECONDS)
    except RedisError as exc:  # the follower reads on (or learns of the outage itself); only the place is missed
        log.debug("could not announce the place of job %s: %s", job_id, exc)


async def wait_for(state: AppState, job: JobRecord, *, client: Request | None = None) -> JobRecord:
    """Block until the job ends (up to JOB_WAIT_TIMEOUT_SECONDS); return it, or raise the API error its failure
    maps to. With the `client`'s request, a client that goes away cancels the job (within DISCONNECT_SECONDS)
    and the wait ends at once: nobody is left to answer, and the job would only hold a slot."""
    try:
        async with asyncio.timeout(state.settings.job_wait_timeout_seconds):
            if client is None:
                async for _ in follow(state, job.id):
                    pass
            else:
                await _until_done_or_gone(state, job, client)
    except TimeoutError:
        raise GatewayTimeout(
            f"job {job.id} did not finish in time; it is still {job.status}: poll /v1/jobs/{job.id}"
        ) from None
    final = await state.store.get(job.id, owner=job.owner)
    if final is None:
        raise GatewayTimeout(f"job {job.id} expired before it finished")
    raise_for_failure(final)
    return final


async def _until_done_or_gone(state: AppState, job: JobRecord, client: Request) -> None:
    async def ended() -> None:
        async for _ in follow(state, job.id):
            pass

    waiter = asyncio.create_task(ended(), name=f"speechq-wait-{job.id}")
    try:
        while not waiter.done():
            if await client.is_disconnected():
                await abandon(state, job)
                raise ClientGone(f"the client went away; job {job.id} was cancelled")
            await asyncio.wait({waiter}, timeout=DISCONNECT_SECONDS)
        waiter.result()
    finally:
        waiter.cancel()


async def abandon(state: AppState, job: JobRecord) -> None:
    """Cancel a job whose client went away (if it has not ended), and count it. Shielded: it runs while the
    request's own task is being cancelled."""
    with anyio.CancelScope(shield=True):
        try:
            status = await state.store.cancel(job.id, owner=job.owner)
        except RedisError as exc:  # the job runs on; nothing else is lost
            log.warning("could not cancel job %s, whose client went away: %s", job.id, exc)
            return
        if status in (JobStatus.cancelled, JobStatus.cancelling):
            state.metrics.jobs_abandoned.labels(job.kind.value).inc()
            log.info("job %s cancelled: its client went away", job.id)


T = TypeVar("T")


@asynccontextmanager
async def cancelled_if_left(state: AppState, job: JobRecord) -> AsyncIterator[None]:
    """Cancel `job` if the block is left because its client went away: the request's task was cancelled (by
    the server, or by `Inbox.while_connected` for a WebSocket), or a send found the WebSocket closed."""
    try:
        yield
    except (asyncio.CancelledError, WebSocketDisconnect):
        await abandon(state, job)
        raise


async def cancelled_if_abandoned(state: AppState, job: JobRecord, stream: AsyncIterator[T]) -> AsyncIterator[T]:
    """`stream` (a streaming route's body, which ends once the job has), cancelling the job if the client
    goes away before the end: the server then stops the body's task, and this notices."""
    finished = False
    try:
        async for item in stream:
            yield item
        finished = True
    finally:
        if not finished:
            await abandon(state, job)


async def stored_audio(store: JobStore, job: JobRecord) -> bytes:
    """The audio a synthesis or dialogue job stored, or a 404 once it has expired."""
    audio = await store.output(job.id)
    if audio is None:
        raise NotFound(f"the audio of job {job.id} is no longer stored", param="job_id")
    return audio


async def accepted(
    state: AppState, kind: JobKind, payload: Any, principal: Principal, request_id: str, idem: str | None
) -> JSONResponse:
    """Submit and answer the new job (`created`)."""
    job, replayed = await submit(state, kind, payload, principal, request_id=request_id, idempotency_key=idem)
    return created(job, replayed)


def created(job: JobRecord, replayed: bool) -> JSONResponse:
    """The one answer for a new job, whatever route made it: 202, its public shape, `Location`, `X-Job-ID`,
    and `Idempotent-Replayed` (true when an Idempotency-Key returned an existing job)."""
    headers = {"Location": f"/v1/jobs/{job.id}", "X-Job-ID": job.id, "Idempotent-Replayed": str(replayed).lower()}
    return JSONResponse(job_created(job).model_dump(mode="json"), status_code=202, headers=headers)
