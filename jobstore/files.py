"""Files and batches (OpenAI's Files and Batch APIs), kept in Redis beside the jobs and expiring with them.

A file is a hash of metadata plus its bytes; a batch is a hash of its state plus the list of its
requests, each `[custom_id, job_id, model]`: every request runs as an ordinary job on the queue.
Files count against their key's storage quota (`jobstore/storage.py`) until they expire or are deleted.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, cast

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from jobstore import keys
from jobstore.storage import StorageAccount


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


class BatchStore:
    def __init__(self, redis: Redis, raw: Redis, *, ttl: int) -> None:
        self.redis = redis
        self.raw = raw
        self.ttl = ttl
        self.storage = StorageAccount(redis, ttl=ttl)

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
    async def put_batch(self, owner: str, batch: dict[str, Any], requests: list[list[str]]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                keys.batch(batch["id"]),
                mapping={"owner": owner, "record": json.dumps(batch), "requests": json.dumps(requests)},
            )
            pipe.expire(keys.batch(batch["id"]), self.ttl)
            pipe.zadd(keys.owner_batches(owner), {batch["id"]: batch["created_at"]})
            pipe.expire(keys.owner_batches(owner), self.ttl)
            await pipe.execute()

    async def get_batch(self, batch_id: str, owner: str) -> tuple[dict[str, Any], list[list[str]]] | None:
        raw = cast(dict[str, str], await self.redis.hgetall(keys.batch(batch_id)))
        if not raw or raw.get("owner") != owner:
            return None
        return json.loads(raw["record"]), json.loads(raw["requests"])

    async def save_batch(self, batch: dict[str, Any]) -> None:
        await self.redis.hset(keys.batch(batch["id"]), "record", json.dumps(batch))

    async def list_batches(self, owner: str, limit: int) -> list[str]:
        return cast(list[str], await self.redis.zrevrange(keys.owner_batches(owner), 0, limit - 1))

    async def job_statuses(self, job_ids: list[str]) -> list[str | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(keys.job(job_id), "status")
            return cast(list[str | None], await pipe.execute())

    async def claim_finalizing(self, batch_id: str) -> bool:
        """Only one API process writes a batch's output files."""
        return bool(await self.redis.set(keys.batch_finalizer(batch_id), "1", nx=True, ex=120))
