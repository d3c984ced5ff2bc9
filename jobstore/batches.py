"""Batch records (OpenAI's Batch API), kept in Redis beside the jobs and expiring with them.

A batch is a hash: `owner`; `record` (the public Batch object, changed only through `update_batch`, a
compare-and-set on `rev`); `lease` while it is `finalizing`; `finalize_attempts`; `job_ids` (a JSON list,
what a sweep reads to count ended jobs) and `requests` (per line `[custom_id, job_id, model,
response_format]`, read only to write the output files). Every request runs as an ordinary job on the
queue. `api/batch_service.py` decides what a batch's state becomes.

Batches stored by the previous version have no `rev` (read as "0" here and in `lua/batch_update.lua`),
no `job_ids` (taken from `requests`) and were never listed in `keys.OPEN_BATCHES`: `list_unlisted_open`
finds them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, cast

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from jobstore import keys, scripts
from jobstore.webhooks import Webhook, WebhookOutbox, batch_event

HEAD = ("owner", "record", "rev", "lease", "webhook_url", "webhook_events")  # what a sweep reads of an open batch
OPEN_STATUSES = ("in_progress", "cancelling")  # a batch in these waits on its jobs


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A batch as read back: its public record and what guards a change to it."""

    owner: str  # the API key's id
    record: dict[str, Any]  # the Batch object OpenAI's API answers
    rev: str  # bumped by every change: a change made from an older read is refused
    lease: float | None  # while `finalizing`: until when (unix seconds) its finalizer holds it
    webhook: Webhook | None = None  # whom to tell when it ends

    @property
    def id(self) -> str:
        return str(self.record["id"])

    @property
    def status(self) -> str:
        return str(self.record["status"])


class BatchStore:
    def __init__(self, redis: Redis, *, ttl: int) -> None:
        self.redis = redis
        self.ttl = ttl
        self._update = redis.register_script(scripts.source("batch_update"))
        self._outbox = WebhookOutbox(redis)

    async def put_batch(
        self,
        owner: str,
        batch: dict[str, Any],
        requests: list[list[str]],
        *,
        ongoing: bool,
        webhook: Webhook | None = None,
    ) -> None:
        """Store a new batch; an `ongoing` one (not yet ended) is listed in `keys.OPEN_BATCHES` for the sweepers,
        one that ended as it was made (`failed`) has its webhook's event queued with it."""
        fields: dict[FieldT, EncodableT] = {
            "owner": owner,
            "record": json.dumps(batch),
            "requests": json.dumps(requests),
            "job_ids": json.dumps([request[1] for request in requests]),
            "rev": "0",
        }
        if webhook is not None:
            fields.update(webhook.fields())
        event = [] if ongoing else batch_event(batch["id"], batch["status"], webhook, owner)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.batch(batch["id"]), mapping=fields)
            pipe.expire(keys.batch(batch["id"]), self.ttl)
            pipe.zadd(keys.owner_batches(owner), {batch["id"]: batch["created_at"]})
            pipe.expire(keys.owner_batches(owner), self.ttl)
            if ongoing:
                pipe.zadd(keys.OPEN_BATCHES, {batch["id"]: batch["created_at"]})
            if event:
                event_id, url, event_owner, etype, body = event
                await self._outbox.put_script(
                    keys=[], args=[event_id, url, event_owner, batch["id"], etype, body], client=pipe
                )
            await pipe.execute()

    async def drop_batch(self, batch_id: str, owner: str) -> None:
        """Remove every trace of a batch whose creation failed halfway."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.batch(batch_id))
            pipe.zrem(keys.owner_batches(owner), batch_id)
            pipe.zrem(keys.OPEN_BATCHES, batch_id)
            await pipe.execute()

    async def get_batch(self, batch_id: str, owner: str | None = None) -> StoredBatch | None:
        """The batch (only if `owner`'s, when one is named), or None when there is none or it has expired.
        Reads only its record and what guards it, never its requests."""
        found = cast(list[str | None], await self.redis.hmget(keys.batch(batch_id), list(HEAD)))
        batch_owner, record, rev, lease, url, events = found
        if batch_owner is None or record is None or (owner is not None and batch_owner != owner):
            return None
        return StoredBatch(
            owner=batch_owner,
            record=json.loads(record),
            rev=rev or "0",  # written by the previous version, which kept no revision
            lease=float(lease) if lease else None,
            webhook=Webhook.stored({"webhook_url": url or "", "webhook_events": events or ""}),
        )

    async def job_ids(self, batch_id: str) -> list[str]:
        """The id of each line's job, in line order."""
        found = cast(str | None, await self.redis.hget(keys.batch(batch_id), "job_ids"))
        if found is not None:
            return cast(list[str], json.loads(found))
        return [request[1] for request in await self.requests(batch_id)]

    async def requests(self, batch_id: str) -> list[list[str]]:
        """Per line `[custom_id, job_id, model, response_format]`; [] once the batch has expired."""
        found = cast(str | None, await self.redis.hget(keys.batch(batch_id), "requests"))
        return cast(list[list[str]], json.loads(found)) if found else []

    async def update_batch(
        self, read: StoredBatch, record: dict[str, Any], *, lease: float | None = None, ongoing: bool = True
    ) -> StoredBatch | None:
        """Replace the record of the batch as `read`, only if nobody has changed it since (`lua/batch_update.lua`):
        the batch as it now is, or None when someone had. An ended batch (not `ongoing`) leaves
        `keys.OPEN_BATCHES`, and its webhook's event is queued in the same step."""
        event = [] if ongoing else batch_event(record["id"], record["status"], read.webhook, read.owner)
        replaced = await self._update(
            keys=[keys.batch(record["id"]), keys.OPEN_BATCHES],
            args=[
                record["id"],
                read.rev,
                json.dumps(record),
                "" if lease is None else repr(lease),
                int(ongoing),
                *event,
            ],
        )
        return replace(read, record=record, rev=str(int(read.rev) + 1), lease=lease) if replaced else None

    async def count_finalize_attempt(self, batch_id: str) -> int:
        """One more try at writing the batch's files: how many there have been."""
        return int(await self.redis.hincrby(keys.batch(batch_id), "finalize_attempts", 1))

    async def open_batches(self) -> list[str]:
        """Every batch not yet ended, oldest first."""
        return cast(list[str], await self.redis.zrange(keys.OPEN_BATCHES, 0, -1))

    async def forget_open(self, batch_id: str) -> None:
        """A batch listed as open whose record has expired."""
        await self.redis.zrem(keys.OPEN_BATCHES, batch_id)

    async def take_sweep_turn(self, interval: float) -> bool:
        """Whether this process sweeps the batches this interval: the first to ask in each one does."""
        return bool(await self.redis.set(keys.BATCH_SWEEP_TURN, "1", nx=True, px=max(1, int(interval * 1000))))

    async def list_unlisted_open(self) -> int:
        """List in `keys.OPEN_BATCHES` every batch the previous version left in progress (it kept no such
        list, nor a `rev`); how many were found. One scan of the batch records, at start-up."""
        prefix = keys.batch("")
        found = 0
        async for key in self.redis.scan_iter(match=keys.batch("*"), count=500, _type="hash"):
            batch_id = str(key)[len(prefix) :]
            if ":" in batch_id:  # not a batch record
                continue
            rev, record = cast(list[str | None], await self.redis.hmget(key, ["rev", "record"]))
            if rev is not None or record is None:
                continue
            batch = json.loads(record)
            if batch.get("status") in OPEN_STATUSES:
                found += int(await self.redis.zadd(keys.OPEN_BATCHES, {batch_id: batch["created_at"]}, nx=True) or 0)
        return found

    async def list_batches(self, owner: str, limit: int) -> list[str]:
        return cast(list[str], await self.redis.zrevrange(keys.owner_batches(owner), 0, limit - 1))

    async def job_statuses(self, job_ids: list[str]) -> list[str | None]:
        """Each job's status (None once it has expired), in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(keys.job(job_id), "status")
            return cast(list[str | None], await pipe.execute())

    async def job_rows(self, job_ids: list[str], owner: str) -> list[dict[str, str] | None]:
        """Each job's stored hash, None when it has expired (or is not `owner`'s). Left unparsed: the caller
        turns each into a `JobRecord` on its own, so that one malformed job spoils only its own line."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(keys.job(job_id))
            rows = cast(list[dict[str, str]], await pipe.execute())
        return [row if row and row.get("owner") == owner else None for row in rows]
