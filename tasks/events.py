"""Reading a job's event log: replay from any point, then follow live until the terminal `done`.

Events live in a Redis Stream per job (lossless, replayable, ids increase); every append also
PUBLISHes the new id on the job's notify channel. An API process holds one pub/sub connection
(`EventHub`) and wakes the readers of a job when its channel fires, so a live reader costs no Redis
connection of its own and no polling. A reader reads the stream after the last id it gave out, so a
missed notification delays it by at most `poll` seconds and never loses or repeats an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from tasks import keys
from tasks.jobs import EventType

log = logging.getLogger(__name__)
_HUB_CHANNEL = f"{keys.PREFIX}:hub"


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    data: Any

    @property
    def terminal(self) -> bool:
        return self.type == EventType.done


def parse_event_id(value: str | None) -> str | None:
    """A valid stream id (`<ms>-<seq>`) or None; anything else is rejected by the caller."""
    if value is None or value == "":
        return None
    ms, _, seq = value.partition("-")
    if not ms.isdigit() or (seq and not seq.isdigit()):
        raise ValueError(f"not an event id: {value!r}")
    return f"{ms}-{seq or 0}"


class EventHub:
    """One pub/sub connection per process; `watch(job_id)` yields an `asyncio.Event` set on each append."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="speechq-event-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[asyncio.Event]:
        channel = keys.notify(job_id)
        wake = asyncio.Event()
        first = not self._waiters[channel]
        self._waiters[channel].add(wake)
        try:
            if first and self._pubsub is not None:
                with contextlib.suppress(RedisError):
                    await self._pubsub.subscribe(channel)
            yield wake
        finally:
            self._waiters[channel].discard(wake)
            if not self._waiters[channel]:
                del self._waiters[channel]
                if self._pubsub is not None:
                    with contextlib.suppress(RedisError):
                        await self._pubsub.unsubscribe(channel)

    async def _run(self) -> None:
        while True:
            try:
                self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                await self._pubsub.subscribe(_HUB_CHANNEL, *self._waiters)
                while True:
                    message = await self._pubsub.get_message(timeout=5.0)
                    if message is not None:
                        for wake in self._waiters.get(message["channel"], ()):
                            wake.set()
            except RedisError as exc:
                log.warning("event hub lost Redis (%s); readers fall back to polling until it is back", exc)
                for waiters in self._waiters.values():
                    for wake in waiters:
                        wake.set()
                await asyncio.sleep(1.0)


async def read_events(
    redis: Redis, hub: EventHub, job_id: str, *, after: str | None = None, poll: float = 2.0
) -> AsyncIterator[Event]:
    """Every event of the job after `after` (all of them when None), live, ending with `done`."""
    stream = keys.events(job_id)
    last = after or "0-0"
    async with hub.watch(job_id) as wake:
        while True:
            wake.clear()
            entries = cast(
                list[tuple[str, dict[str, str]]], await redis.xrange(stream, min=f"({last}", max="+", count=1000)
            )
            for event_id, fields in entries:
                last = event_id
                event = Event(id=event_id, type=fields["type"], data=json.loads(fields["data"]))
                yield event
                if event.terminal:
                    return
            if entries:
                continue
            if not await redis.exists(keys.job(job_id)):
                return  # the job expired while we were reading
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), poll)
