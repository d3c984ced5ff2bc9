"""Rate limiting in Redis, shared by every API process: a GCRA bucket per API key, else per client IP.

`RATE_LIMIT_REQUESTS` per `RATE_LIMIT_WINDOW_SECONDS` is the sustained rate; `RATE_LIMIT_BURST_MULTIPLIER`
only makes the bucket bigger. Answers carry `RateLimit-Policy` and `RateLimit` (IETF httpapi draft);
a refusal is a 429 with `Retry-After`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis.asyncio import Redis

from config import Settings
from jobstore import keys, scripts


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    headers: dict[str, str]  # RateLimit-Policy, RateLimit, and Retry-After when refused


class RateLimiter:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.enabled = settings.rate_limit_enabled
        self.window = settings.rate_limit_window_seconds
        self.interval_ms = self.window * 1000 / settings.rate_limit_requests
        self.burst = max(1, math.floor(settings.rate_limit_requests * settings.rate_limit_burst_multiplier))
        self.policy = f'"default";q={self.burst};w={math.ceil(self.window)}'
        self._script = redis.register_script(scripts.source("ratelimit"))

    async def check(self, scope: str) -> Decision:
        allowed, remaining, retry_ms, reset_ms = await self._script(
            keys=[keys.rate_limit(scope)], args=[self.interval_ms, self.burst]
        )
        headers = {
            "RateLimit-Policy": self.policy,
            "RateLimit": f'"default";r={int(remaining)};t={math.ceil(float(reset_ms) / 1000)}',
        }
        if not allowed:
            headers["Retry-After"] = str(max(1, math.ceil(float(retry_ms) / 1000)))
        return Decision(bool(allowed), headers)
