"""Reading a job's event log: replay from any point, then follow live until the terminal `done`.

Events live in a Redis Stream per job (lossless, replayable, ids increase); every append also
PUBLISHes the event, with the id of the one before it, on the job's notify channel. An API process
holds one pub/sub connection (`EventHub`) shared by every live reader, so a reader costs no Redis
connection of its own. A reader takes a notified event directly when it continues from the last id it
gave out, and otherwise reads the stream after that id: a missed notification delays it by at most
`poll` seconds and never loses or repeats an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from contract.jobs import EventType
from jobstore import keys

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    data: Any

    @property
    def terminal(self) -> bool:
        return self.type == EventType.done

    @classmethod
    def from_entry(cls, event_id: str, fields: dict[str, str]) -> Event:
        """An entry of a job's stream (`XRANGE`/`XREAD`): the one place its fields are read."""
        return cls(id=event_id, type=fields["type"], data=json.loads(fields["data"]))


def parse_event_id(value: str | None) -> str | None:
    """A valid stream id (`<ms>-<seq>`) or None; anything else is rejected by the caller."""
    if value is None or value == "":
        return None
    ms, _, seq = value.partition("-")
    if not _part(ms) or (seq and not _part(seq)):
        raise ValueError(f"not an event id: {value[:40]!r}")
    return f"{ms}-{seq or 0}"


def _part(text: str) -> bool:
    """ASCII digits for a number Redis takes in a stream id (`isdigit` alone would pass "²")."""
    return text.isascii() and text.isdigit() and int(text) < 2**64


def _order(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(slots=True, eq=False)  # identity-hashed: a hub keeps a set of them
class Watch:
    """A live reader's mailbox: events as notified, each with the id of the event before it."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    notified: deque[tuple[str, Event]] = field(default_factory=deque)


class EventHub:
    """One pub/sub connection per process, fanning each job's notifications out to its live readers."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._watches: dict[str, set[Watch]] = defaultdict(set)
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
            # Through a typed name: redis-py annotates `aclose` from 8.2 on and left it bare before, and a
            # call-site `type: ignore` would be wrong under one of them.
            aclose: Callable[[], Awaitable[None]] = self._pubsub.aclose
            await aclose()

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[Watch]:
        channel = keys.notify(job_id)
        watch = Watch()
        first = not self._watches[channel]
        self._watches[channel].add(watch)
        try:
            if first and self._pubsub is not None:
                with contextlib.suppress(RedisError):
                    await self._pubsub.subscribe(channel)
            yield watch
        finally:
            self._watches[channel].discard(watch)
            if not self._watches[channel]:
                del self._watches[channel]
                if self._pubsub is not None:
                    with contextlib.suppress(RedisError):
                        await self._pubsub.unsubscribe(channel)

    def _deliver(self, channel: str, payload: str) -> None:
        previous, event_id, event_type, data = payload.split(" ", 3)
        event = Event(id=event_id, type=event_type, data=json.loads(data))
        for watch in self._watches.get(channel, ()):
            watch.notified.append((previous, event))
            watch.wake.set()

    async def _run(self) -> None:
        while True:
            try:
                self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                await self._pubsub.subscribe(keys.HUB, *self._watches)
                while True:
                    message = await self._pubsub.get_message(timeout=5.0)
                    if message is not None and message["channel"] != keys.HUB:
                        self._deliver(message["channel"], message["data"])
            except RedisError as exc:
                log.warning("event hub lost Redis (%s); readers fall back to polling until it is back", exc)
                for watches in self._watches.values():
                    for watch in watches:
                        watch.wake.set()
                await asyncio.sleep(1.0)


async def _nothing_follows(redis: Redis, job_id: str, last: str) -> bool:
    """Whether no event can come after `last`: the reader already has the terminal event (a resume from
    `done` itself), or the job expired while it was reading."""
    tail = cast(list[tuple[str, dict[str, str]]], await redis.xrevrange(keys.events(job_id), count=1))
    if tail and tail[0][1].get("type") == EventType.done and _order(tail[0][0]) <= _order(last):
        return True
    return not await redis.exists(keys.job(job_id))


async def read_events(
    redis: Redis, hub: EventHub, job_id: str, *, after: str | None = None, poll: float = 2.0
) -> AsyncIterator[Event]:
    """Every event of the job after `after` (all of them when None), live, ending with `done`.

    Notified events that continue exactly from the last one given out are used as they come; any gap
    (a reader that joined late, a lost notification, a reconnect) is filled from the stream.
    """
    stream = keys.events(job_id)
    last = after or "0-0"
    async with hub.watch(job_id) as watch:
        must_read = True
        while True:
            if must_read:
                must_read = False
                watch.wake.clear()
                entries = cast(
                    list[tuple[str, dict[str, str]]], await redis.xrange(stream, min=f"({last}", max="+", count=1000)
                )
                for event_id, fields in entries:
                    last = event_id
                    event = Event.from_entry(event_id, fields)
                    yield event
                    if event.terminal:
                        return
                if len(entries) == 1000:
                    must_read = True
                    continue
                if not entries and await _nothing_follows(redis, job_id, last):
                    return
            while watch.notified:
                previous, event = watch.notified.popleft()
                if _order(event.id) <= _order(last):
                    continue  # already read from the stream
                if previous != last:
                    watch.notified.clear()
                    must_read = True
                    break
                last = event.id
                yield event
                if event.terminal:
                    return
            if must_read:
                continue
            try:
                await asyncio.wait_for(watch.wake.wait(), poll)
            except TimeoutError:
                must_read = True
            watch.wake.clear()
