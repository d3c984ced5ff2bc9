"""Files and batches (OpenAI's Files and Batch APIs), kept in Redis beside the jobs and expiring with them.

A file is a hash of metadata plus its bytes; a batch is a hash of its state (`record`, changed only
through `update_batch`, a compare-and-set on its `rev`) plus the list of its requests, each
`[custom_id, job_id, model, response_format]`: every request runs as an ordinary job on the queue.
`api/batches.py` decides what a batch's state becomes.
Files count against their key's storage quota (`jobstore/storage.py`) until they expire or are deleted.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any, cast

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from contract.jobs import JobRecord
from jobstore import keys, scripts
from jobstore.storage import StorageAccount


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


class BatchStore:
    def __init__(self, redis: Redis, raw: Redis, *, ttl: int) -> None:
        self.redis = redis
        self.raw = raw
        self.ttl = ttl
        self.storage = StorageAccount(redis, ttl=ttl)
        self._update = redis.register_script(scripts.source("batch_update"))

    # --- files ----------------------------------------------------------------------------------
    async def put_file(
        self, owner: str, filename: str, purpose: str, data: bytes, *, quota: int | None = None
    ) -> dict[str, Any]:
        """Store a file for `owner`; with a `quota` (None: not counted; 0: counted, never refused) its bytes
        count against the key's storage, and `OverStorageQuota` refuses it before anything is stored."""
        charge = await self.storage.charge(owner, len(data), quota=quota) if quota is not None else None
        file_id = new_id("file-")
        created = int(time.time())
        record = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": created,
            "expires_at": created + self.ttl,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        fields: dict[FieldT, EncodableT] = {"owner": owner, "record": json.dumps(record)}
        if charge is not None:
            fields.update(charge.fields(len(data)))
        try:
            await self.raw.set(keys.file_content(file_id), data, ex=self.ttl)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(keys.file(file_id), mapping=fields)
                pipe.expire(keys.file(file_id), self.ttl)
                pipe.zadd(keys.owner_files(owner), {file_id: created})
                pipe.expire(keys.owner_files(owner), self.ttl)
                await pipe.execute()
        except BaseException:
            if charge is not None:
                await self.storage.refund(charge)
            await self.raw.delete(keys.file_content(file_id))
            raise
        return record

    async def get_file(self, file_id: str, owner: str) -> dict[str, Any] | None:
        raw = cast(dict[str, str], await self.redis.hgetall(keys.file(file_id)))
        if not raw or raw.get("owner") != owner:
            return None
        return cast(dict[str, Any], json.loads(raw["record"]))

    async def file_content(self, file_id: str, owner: str) -> bytes | None:
        if await self.get_file(file_id, owner) is None:
            return None
        value = await self.raw.get(keys.file_content(file_id))
        return value if isinstance(value, bytes) else None

    async def list_files(self, owner: str, purpose: str | None = None) -> list[dict[str, Any]]:
        ids = cast(list[str], await self.redis.zrevrange(keys.owner_files(owner), 0, -1))
        files = [await self.get_file(file_id, owner) for file_id in ids]
        return [f for f in files if f is not None and (purpose is None or f["purpose"] == purpose)]

    async def delete_file(self, file_id: str, owner: str) -> bool:
        if await self.get_file(file_id, owner) is None:
            return False
        await self.storage.release(keys.file(file_id), keys.file_content(file_id), drop_record=True)
        await self.redis.zrem(keys.owner_files(owner), file_id)
        return True

    # --- batches --------------------------------------------------------------------------------
    async def put_batch(self, owner: str, batch: dict[str, Any], requests: list[list[str]], *, ongoing: bool) -> None:
        """Store a new batch; an `ongoing` one (not yet ended) is listed in `keys.OPEN_BATCHES` for the sweepers."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                keys.batch(batch["id"]),
                mapping={"owner": owner, "record": json.dumps(batch), "requests": json.dumps(requests), "rev": "0"},
            )
            pipe.expire(keys.batch(batch["id"]), self.ttl)
            pipe.zadd(keys.owner_batches(owner), {batch["id"]: batch["created_at"]})
            pipe.expire(keys.owner_batches(owner), self.ttl)
            if ongoing:
                pipe.zadd(keys.OPEN_BATCHES, {batch["id"]: batch["created_at"]})
            await pipe.execute()

    async def drop_batch(self, batch_id: str, owner: str) -> None:
        """Remove every trace of a batch whose creation failed halfway."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.batch(batch_id))
            pipe.zrem(keys.owner_batches(owner), batch_id)
            pipe.zrem(keys.OPEN_BATCHES, batch_id)
            await pipe.execute()

    async def get_batch(self, batch_id: str, owner: str | None = None) -> StoredBatch | None:
        """The batch (only if `owner`'s, when one is named), or None when there is none or it has expired."""
        raw = cast(dict[str, str], await self.redis.hgetall(keys.batch(batch_id)))
        if not raw or "rev" not in raw or (owner is not None and raw.get("owner") != owner):
            return None
        return StoredBatch(
            owner=raw["owner"],
            record=json.loads(raw["record"]),
            requests=json.loads(raw["requests"]),
            rev=raw["rev"],
            lease=float(raw["lease"]) if raw.get("lease") else None,
        )

    async def update_batch(
        self, read: StoredBatch, record: dict[str, Any], *, lease: float | None = None, ongoing: bool = True
    ) -> StoredBatch | None:
        """Replace the record of the batch as `read`, only if nobody has changed it since (`lua/batch_update.lua`):
        the batch as it now is, or None when someone had. An ended batch (not `ongoing`) leaves
        `keys.OPEN_BATCHES`."""
        replaced = await self._update(
            keys=[keys.batch(record["id"]), keys.OPEN_BATCHES],
            args=[record["id"], read.rev, json.dumps(record), "" if lease is None else repr(lease), int(ongoing)],
        )
        return replace(read, record=record, rev=str(int(read.rev) + 1), lease=lease) if replaced else None

    async def open_batches(self) -> list[str]:
        """Every batch not yet ended, oldest first."""
        return cast(list[str], await self.redis.zrange(keys.OPEN_BATCHES, 0, -1))

    async def forget_open(self, batch_id: str) -> None:
        """A batch listed as open whose record has expired."""
        await self.redis.zrem(keys.OPEN_BATCHES, batch_id)

    async def list_batches(self, owner: str, limit: int) -> list[str]:
        return cast(list[str], await self.redis.zrevrange(keys.owner_batches(owner), 0, limit - 1))

    async def job_statuses(self, job_ids: list[str]) -> list[str | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(keys.job(job_id), "status")
            return cast(list[str | None], await pipe.execute())

    async def jobs(self, job_ids: list[str], owner: str) -> list[JobRecord | None]:
        """The jobs, each None when it has expired (or is not `owner`'s)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(keys.job(job_id))
            rows = cast(list[dict[str, str]], await pipe.execute())
        return [JobRecord.from_hash(row) if row and row.get("owner") == owner else None for row in rows]


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A batch as read back: its public record, its requests, and what guards a change to it."""

    owner: str  # the API key's id
    record: dict[str, Any]  # the Batch object OpenAI's API answers
    requests: list[list[str]]  # per line: [custom_id, job_id, model, response_format]
    rev: str  # bumped by every change: a change made from an older read is refused
    lease: float | None  # while `finalizing`: until when (unix seconds) its finalizer holds it

    @property
    def status(self) -> str:
        return str(self.record["status"])

    @property
    def job_ids(self) -> list[str]:
        return [request[1] for request in self.requests]
