"""`BatchService`: a batch's life — created all or none, advanced by the sweepers, cancelled on request.

    in_progress ──every job ended──▶ finalizing ──files written──▶ completed
         │                                ▲
         └─cancel / 24 h window─▶ cancelling ─every job ended─┘ ──▶ cancelled / expired

A batch whose lines do not validate is `failed` at once and runs nothing. Reading a batch changes
nothing: `BatchSweeper` (`api/batch_sweeper.py`) calls `sweep`, in one API process per interval. Each
change of a batch's record is a compare-and-set on the record as read (`BatchStore.update_batch`), so
of several processes moving one batch (a sweep and a cancel), one succeeds and the others find it moved.
The output and error files are written only by the process whose move to `finalizing` landed; that move
carries a lease, and a finalizer that died holding it is replaced once the lease has run out. A job
whose result does not read back fails only its own line; a batch whose files cannot be written after
MAX_FINALIZE_ATTEMPTS tries ends `failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from api.batch_lines import ENDPOINTS, BatchCreate, LinePlanner, Planned, queue_of, refund, result_line
from api.errors import NotFound
from config import Settings
from contract.jobs import JobRecord, JobStatus, ServiceTier
from jobstore import keys
from jobstore.batches import OPEN_STATUSES, BatchStore, StoredBatch
from jobstore.creation import Allowance, storage_quota
from jobstore.files import FileStore, new_id
from jobstore.store import JobStore
from jobstore.webhooks import Webhook
from tasks.scheduler import resolve_tier

log = logging.getLogger(__name__)

WINDOW_SECONDS = 24 * 3600
MAX_ERRORS = 100  # of a failed batch's line errors, the first this many are kept
FINALIZE_LEASE_SECONDS = 300.0  # writing a batch's files takes well under a second per thousand lines
CANCEL_SETTLE_SECONDS = 2.0  # how long a cancel waits for a finalizing under way elsewhere to end
MAX_FINALIZE_ATTEMPTS = 5  # tries at writing a batch's files before it ends `failed`
SETTLE_INLINE_LINES = 5_000  # a cancel answers `cancelled` with the files written up to this many lines


class BatchService:
    def __init__(self, store: JobStore, files: FileStore, batches: BatchStore, settings: Settings) -> None:
        self.store = store
        self.files = files
        self.batches = batches
        self.settings = settings

    # --- create ---------------------------------------------------------------------------------
    async def create(
        self, owner: str, body: BatchCreate, *, request_id: str | None, webhook: Webhook | None = None
    ) -> dict[str, Any]:
        """A batch of the input file's lines, each a job, all queued or none; `body.endpoint` is one of
        `ENDPOINTS`; `webhook` is told when it ends (a batch that fails as it is made, at once). Raises
        `NotFound` for a missing input file and the job store's refusals (`QueueFull`, `TooManyActive`,
        `OverStorageQuota`), which leave nothing behind."""
        content = await self.files.file_content(body.input_file_id, owner)
        if content is None:
            raise NotFound(f"No such File object: {body.input_file_id}", param="input_file_id")
        batch = batch_object(new_id("batch_"), body, int(time.time()))
        planner = LinePlanner(self.settings, self.store.redis, self.files, owner)
        plans, errors = await planner.plan(content, body.endpoint)
        batch["request_counts"]["total"] = len(plans) + len(errors)
        if errors:
            await refund(plans)
            batch.update(status="failed", failed_at=batch["created_at"])
            batch["errors"] = {"object": "list", "data": errors[:MAX_ERRORS]}
            await self.batches.put_batch(owner, batch, [], ongoing=False, webhook=webhook)
            return batch
        # Every line's job or none (`lua/create_many.lua`): they wait in the scheduler at the batch's tier
        # (flex unless asked) and count against QUEUE_MAX_DEPTH and the storage quota.
        policy = self.settings.key_policy(owner)
        try:
            jobs = await self.store.create_many(
                ENDPOINTS[body.endpoint],
                [(plan.payload, plan.audio) for plan in plans],
                owner=keys.batch_owner(owner),
                principal=owner,
                tier=resolve_tier(body.service_tier, policy, route_default=ServiceTier.flex),
                weight=policy.weight,
                request_id=request_id,
                allowance=Allowance.of(self.settings, owner),
            )
        except BaseException:
            await refund(plans)
            raise
        requests = [
            [plan.custom_id, job.id, plan.model, plan.response_format] for plan, job in zip(plans, jobs, strict=True)
        ]
        batch["request_counts"]["waiting"] = len(jobs)
        batch.update(status="in_progress", in_progress_at=int(time.time()))
        try:
            await self.batches.put_batch(owner, batch, requests, ongoing=True, webhook=webhook)
        except BaseException:
            await self._undo_create(owner, batch, jobs, plans)
            raise
        return batch

    async def _undo_create(
        self, owner: str, batch: dict[str, Any], jobs: list[JobRecord], plans: list[Planned]
    ) -> None:
        """The batch could not be recorded after its jobs were queued: end them and take them off the queue,
        so that nothing of it is left (not even a half-written record)."""
        try:
            await self.store.cancel_many(
                [job.id for job in jobs], owner=keys.batch_owner(owner), queue=queue_of(batch["endpoint"])
            )
            await self.batches.drop_batch(batch["id"], owner)
        except Exception:
            log.exception("could not undo the jobs of batch %s, which was not created", batch["id"])
        await refund(plans)

    # --- read -----------------------------------------------------------------------------------
    async def get(self, batch_id: str, owner: str) -> dict[str, Any] | None:
        """The batch as last recorded; reading changes nothing."""
        read = await self.batches.get_batch(batch_id, owner)
        return read.record if read is not None else None

    async def recent(self, owner: str, limit: int) -> list[dict[str, Any]]:
        """The key's newest batches, newest first."""
        found = [await self.get(batch_id, owner) for batch_id in await self.batches.list_batches(owner, limit)]
        return [batch for batch in found if batch is not None]

    # --- cancel ---------------------------------------------------------------------------------
    async def cancel(self, batch_id: str, owner: str) -> dict[str, Any] | None:
        """Cancel a batch in progress: its queued jobs end at once and leave the queue, running ones are asked
        to stop. Answers once the batch has ended if its jobs already have (or once a finalizing under way
        has); a batch of more than SETTLE_INLINE_LINES answers `cancelling`, as OpenAI's does, and the sweeper
        writes its files (seconds, for 50,000 lines). None when there is no such batch."""
        for _ in range(10):  # each retry follows a sweep that changed the batch between our read and write
            read = await self.batches.get_batch(batch_id, owner)
            if read is None or read.status not in ("validating", "in_progress"):
                break
            moved = await self.batches.update_batch(
                read, {**read.record, "status": "cancelling", "cancelling_at": int(time.time())}
            )
            if moved is not None:
                job_ids = await self.batches.job_ids(batch_id)
                await self._cancel_jobs(moved, job_ids)
                if len(job_ids) <= SETTLE_INLINE_LINES:  # a large one's files are the sweeper's to write
                    await self.advance(batch_id)
                break
        return await self._settled(batch_id, owner)

    async def _settled(self, batch_id: str, owner: str) -> dict[str, Any] | None:
        """The batch, once a finalizing under way in another process has ended (or after a few seconds)."""
        deadline = time.monotonic() + CANCEL_SETTLE_SECONDS
        while True:
            read = await self.batches.get_batch(batch_id, owner)
            if read is None or read.status != "finalizing" or time.monotonic() > deadline:
                return read.record if read is not None else None
            await asyncio.sleep(0.05)

    async def _cancel_jobs(self, batch: StoredBatch, job_ids: list[str]) -> None:
        # Their messages leave the queue too; any a worker already took is skipped before any model is used.
        await self.store.cancel_many(
            job_ids, owner=keys.batch_owner(batch.owner), queue=queue_of(batch.record["endpoint"])
        )

    # --- advance --------------------------------------------------------------------------------
    async def list_unlisted_open(self) -> None:
        """Have the sweeps advance the batches the previous version left in progress (once, at start-up)."""
        found = await self.batches.list_unlisted_open()
        if found:
            log.info("%d batch(es) stored by the previous version are now advanced by the sweeper", found)

    async def sweep(self) -> None:
        """Advance every batch not yet ended (`keys.OPEN_BATCHES`)."""
        for batch_id in await self.batches.open_batches():
            try:
                await self.advance(batch_id)
            except Exception:  # one batch's trouble (Redis away, a file refused) must not hold up the others
                log.exception("could not advance batch %s", batch_id)

    async def advance(self, batch_id: str) -> None:
        """Bring the batch's record up to date with its jobs: counts, expiry, and its files once all ended.
        Reads the record, then (while the batch waits on them) its jobs' statuses; its requests only once
        every job has ended."""
        read = await self.batches.get_batch(batch_id)
        if read is None:  # expired with its jobs
            await self.batches.forget_open(batch_id)
            return
        if read.status == "finalizing":
            if read.lease is None or read.lease < time.time():  # its finalizer died while writing
                await self._finalize(read, read.record)
            return
        if read.status not in OPEN_STATUSES:
            await self.batches.forget_open(batch_id)
            return
        job_ids = await self.batches.job_ids(batch_id)
        statuses = await self.batches.job_statuses(job_ids)
        ended = [status is None or JobStatus(status).terminal for status in statuses]
        counts = {
            "total": len(statuses),
            "completed": sum(status == JobStatus.succeeded for status in statuses),
            "failed": sum(done and status != JobStatus.succeeded for status, done in zip(statuses, ended, strict=True)),
            "waiting": sum(status == JobStatus.queued for status in statuses),
            "running": sum(status in (JobStatus.running, JobStatus.cancelling) for status in statuses),
        }
        now = int(time.time())
        if all(ended):
            await self._finalize(
                read, {**read.record, "request_counts": counts, "status": "finalizing", "finalizing_at": now}
            )
        elif read.status == "in_progress" and now >= read.record["expires_at"]:
            record = {
                **read.record,
                "request_counts": counts,
                "status": "cancelling",
                "cancelling_at": now,
                "expired_at": now,
            }
            moved = await self.batches.update_batch(read, record)
            if moved is not None:
                await self._cancel_jobs(
                    moved, [job_id for job_id, done in zip(job_ids, ended, strict=True) if not done]
                )
        else:
            if read.status == "cancelling":  # a cancel that stopped halfway (its process died) is finished here
                queued = [
                    job_id for job_id, status in zip(job_ids, statuses, strict=True) if status == JobStatus.queued
                ]
                if queued:
                    await self._cancel_jobs(read, queued)
            if counts != read.record["request_counts"]:
                await self.batches.update_batch(read, {**read.record, "request_counts": counts})

    async def _finalize(self, read: StoredBatch, finalizing: dict[str, Any]) -> None:
        """Claim the batch (`finalizing`, under a lease), write its output and error files, and end it. Of
        several processes trying at once one claims it; the others return. After MAX_FINALIZE_ATTEMPTS
        claims that wrote nothing (an error, or a finalizer that died) the batch ends `failed`."""
        claimed = await self.batches.update_batch(read, finalizing, lease=time.time() + FINALIZE_LEASE_SECONDS)
        if claimed is None:
            return
        attempt = await self.batches.count_finalize_attempt(claimed.id)
        if attempt > MAX_FINALIZE_ATTEMPTS:  # the finalizers before this one died while writing
            await self._give_up(claimed, f"{attempt - 1} finalizers ended without writing its files")
            return
        written: dict[str, str] = {}
        try:
            counts = await self._write_files(claimed, written)
        except BaseException as exc:
            # Nothing half-written stays, and the claim is given up so that the next sweep tries again.
            await self._discard(claimed, written)
            if attempt >= MAX_FINALIZE_ATTEMPTS and isinstance(exc, Exception):
                log.error("batch %s: attempt %d at writing its files failed", claimed.id, attempt, exc_info=exc)
                await self._give_up(claimed, f"its files could not be written in {attempt} attempts")
                return
            with contextlib.suppress(RedisError):
                await self.batches.update_batch(claimed, claimed.record, lease=0.0)
            raise
        record = {**claimed.record, **written, "request_counts": counts}
        if record.get("expired_at"):
            record["status"] = "expired"
        elif record.get("cancelling_at"):
            record.update(status="cancelled", cancelled_at=int(time.time()))
        else:
            record.update(status="completed", completed_at=int(time.time()))
        if await self.batches.update_batch(claimed, record, ongoing=False) is None:
            # Our lease ran out and another process took the batch over: its files are the batch's.
            log.warning("batch %s was finalized elsewhere while this process wrote its files", claimed.id)
            await self._discard(claimed, written)

    async def _give_up(self, claimed: StoredBatch, reason: str) -> None:
        """End a batch whose files cannot be written: `failed`, saying so in general terms (the log has why)."""
        log.error("batch %s failed: %s", claimed.id, reason)
        error = {"code": "finalize_failed", "message": "the batch's output could not be written", "param": None}
        record = {
            **claimed.record,
            "status": "failed",
            "failed_at": int(time.time()),
            "errors": {"object": "list", "data": [{**error, "line": None}]},
        }
        await self.batches.update_batch(claimed, record, ongoing=False)

    async def _write_files(self, batch: StoredBatch, written: dict[str, str]) -> dict[str, int]:
        """The answers to an output file and the failures to an error file (each only if there are any);
        `written` gets the ids of those written, as `output_file_id` and `error_file_id`. Returns the
        batch's `request_counts` as the files have them."""
        requests = await self.batches.requests(batch.id)
        rows = await self.batches.job_rows([request[1] for request in requests], keys.batch_owner(batch.owner))
        expired = bool(batch.record.get("expired_at"))
        lines = [result_line(request, row, batch_expired=expired) for request, row in zip(requests, rows, strict=True)]
        # A batch's files count against the key's storage but are never refused (quota 0): the work is done.
        quota = 0 if storage_quota(self.settings) is not None else None
        for field, name, failed in (("output_file_id", "output", False), ("error_file_id", "error", True)):
            chosen = [line for line in lines if (line["error"] is not None) == failed]
            if chosen:
                data = "".join(json.dumps(line) + "\n" for line in chosen).encode()
                record = await self.files.put_file(
                    batch.owner, f"{batch.id}_{name}.jsonl", "batch_output", data, quota=quota
                )
                written[field] = record["id"]
        answered = sum(line["error"] is None for line in lines)
        return {"total": len(lines), "completed": answered, "failed": len(lines) - answered}

    async def _discard(self, batch: StoredBatch, written: dict[str, str]) -> None:
        for file_id in written.values():
            try:
                await self.files.delete_file(file_id, batch.owner)
            except RedisError as exc:  # it expires with the batch anyway
                log.warning("could not delete file %s of batch %s: %s", file_id, batch.record["id"], exc)


def batch_object(batch_id: str, body: BatchCreate, created: int) -> dict[str, Any]:
    """A new batch as OpenAI's Batch object, `validating`."""
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": body.endpoint,
        "errors": None,
        "input_file_id": body.input_file_id,
        "completion_window": body.completion_window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": created,
        "in_progress_at": None,
        "expires_at": created + WINDOW_SECONDS,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": body.metadata,
    }
