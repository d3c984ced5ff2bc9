"""A realtime session in Redis: its settings and conversation (so an API process that restarts loses at
most the turn in flight: the client reconnects with `?session_id=` and carries on), and the count of a
key's open sessions (MAX_REALTIME_SESSIONS_PER_KEY), shared by every API process."""

from __future__ import annotations

import json
import time
from typing import Any

from redis.asyncio import Redis

LEASE_SECONDS = 60  # an open session renews its place this often ×½; a dead process's lapses after this
KEEP_SECONDS = 3_600  # a session's conversation is kept this long after its last change

# Take a place among the key's open sessions if there is one: drop lapsed places, count, add.
_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if tonumber(ARGV[4]) > 0 and redis.call('ZSCORE', KEYS[1], ARGV[3]) == false
   and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], 86400)
return 1
"""


def _open_key(owner: str) -> str:
    return f"speechq:realtime:open:{owner}"


def _session_key(session_id: str) -> str:
    return f"speechq:realtime:session:{session_id}"


class SessionStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._admit = redis.register_script(_ADMIT)

    async def admit(self, owner: str, session_id: str, limit: int) -> bool:
        """Take (or renew) a place among `owner`'s open sessions; False when `limit` are open already."""
        now = time.time()
        taken = await self._admit(keys=[_open_key(owner)], args=[now, now + LEASE_SECONDS, session_id, limit])
        return bool(taken)

    async def leave(self, owner: str, session_id: str) -> None:
        await self.redis.zrem(_open_key(owner), session_id)

    async def save(self, session_id: str, owner: str, config: dict[str, Any], items: list[dict[str, Any]]) -> None:
        body = json.dumps({"owner": owner, "config": config, "items": items})
        await self.redis.set(_session_key(session_id), body, ex=KEEP_SECONDS)

    async def load(self, session_id: str, owner: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """A kept session's settings and conversation, if it is `owner`'s."""
        raw = await self.redis.get(_session_key(session_id))
        if raw is None:
            return None
        kept = json.loads(raw)
        if kept.get("owner") != owner:
            return None
        return kept["config"], kept["items"]
