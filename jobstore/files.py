"""Files (OpenAI's Files API), kept in Redis beside the jobs and expiring with them: a hash of metadata
plus the file's bytes. Files count against their key's storage quota (`jobstore/storage.py`) until they
expire or are deleted. A batch's records are in `jobstore/batches.py`.
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


class FileStore:
    def __init__(self, redis: Redis, raw: Redis, *, ttl: int) -> None:
        self.redis = redis
        self.raw = raw
        self.ttl = ttl
        self.storage = StorageAccount(redis, ttl=ttl)

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
