"""`StorageAccount`: STORAGE_QUOTA_MB_PER_KEY, what one API key keeps in Redis — uploaded files, job
requests, job inputs — counted per key in time buckets that expire with what they count (`lua/storage.lua`).

A record that holds bytes which can go before it expires (an uploaded file, a job's input) carries
`storage_owner`, `storage_bucket` and `storage_held`, so `lua/release.lua` can give them back when it
is deleted or its job ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from jobstore import keys, scripts

log = logging.getLogger(__name__)

BUCKETS_PER_TTL = 24  # with the 24 h TTL an hour each: usage falls at most an hour after what it counts


class OverStorageQuota(Exception):
    def __init__(self, used: int, adding: int, quota: int) -> None:
        mb = 1024 * 1024
        super().__init__(
            f"this would store {adding / mb:.1f} MB more for your key, which already stores {used / mb:.1f} MB "
            f"of the {quota / mb:g} MB it may keep (STORAGE_QUOTA_MB_PER_KEY); delete files or wait for "
            "older files and jobs to expire"
        )
        self.used = used
        self.adding = adding
        self.quota = quota


@dataclass(frozen=True, slots=True)
class Charge:
    """Bytes counted against a key: where, so they can be given back."""

    owner: str
    bucket: str
    size: int

    def fields(self, held: int) -> dict[str, str]:
        """What a record keeps so `release.lua` gives back `held` of these bytes when they are deleted."""
        return {"storage_owner": self.owner, "storage_bucket": self.bucket, "storage_held": str(held)}


class StorageAccount:
    def __init__(self, redis: Redis, *, ttl: int) -> None:
        self.redis = redis
        self.ttl = ttl
        self.bucket_seconds = max(1, ttl // BUCKETS_PER_TTL)
        self._scripts = {name: redis.register_script(scripts.source(name)) for name in ("storage", "release")}

    async def charge(self, owner: str, size: int, *, quota: int) -> Charge:
        """Count `size` bytes against `owner`; raises `OverStorageQuota` past `quota` (0: never)."""
        reply = await self._scripts["storage"](
            keys=[keys.storage_usage(owner)], args=["charge", size, self.bucket_seconds, self.ttl, quota]
        )
        if reply[0] == "over":
            raise OverStorageQuota(int(reply[1]), size, quota)
        return Charge(owner=owner, bucket=str(reply[1]), size=size)

    async def refund(self, charge: Charge) -> None:
        """Give a charge back when nothing was stored for it; best effort (what is left expires anyway)."""
        try:
            await self._scripts["storage"](
                keys=[keys.storage_usage(charge.owner)], args=["refund", charge.bucket, charge.size]
            )
        except RedisError as exc:
            log.warning("could not refund %d bytes of storage to %s: %s", charge.size, charge.owner, exc)

    async def release(self, record: str, data: str, *, drop_record: bool = False) -> int:
        """Delete `data` (and `record` with `drop_record`) and give back what the record holds."""
        return int(await self._scripts["release"](keys=[record, data], args=["1" if drop_record else "0"]))

    async def usage(self, owner: str) -> int:
        """The bytes `owner` stores now, as counted."""
        return int(
            await self._scripts["storage"](
                keys=[keys.storage_usage(owner)], args=["usage", self.bucket_seconds, self.ttl]
            )
        )
