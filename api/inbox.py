"""The receiving side of an accepted WebSocket, read by a task of its own, so a client that leaves is noticed
at once, even while the server is busy answering its last request. The original API's loops read only
between requests, so a client that closed mid-answer left its generation running for nobody."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from api.client_json import load_json
from api.errors import BadRequest, Unprocessable

T = TypeVar("T")

# Messages read ahead of the one being answered. Past these the reader waits (TCP holds the client back), and
# a client that leaves is noticed once one of them has been answered.
READ_AHEAD = 4


class Inbox:
    """`async with Inbox(websocket) as inbox:` then `await inbox.next_request()` for each request, and
    `await inbox.while_connected(answer(...))` to answer it: the answer is cancelled as soon as the client
    goes, so whatever job it waited for is cancelled on its way out (`intake.jobs.cancelled_if_left`)."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        self._messages: asyncio.Queue[Message | None] = asyncio.Queue()
        self._room = asyncio.Semaphore(READ_AHEAD)
        self._gone = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._reader = asyncio.create_task(self._read(), name="speechq-websocket-inbox")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        try:
            while True:
                await self._room.acquire()
                message = await self._websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                self._messages.put_nowait(message)
        except (WebSocketDisconnect, OSError, RuntimeError):  # the connection broke, or the server closed it
            return
        finally:
            self._gone.set()
            self._messages.put_nowait(None)  # the end, after whatever messages came before it

    @property
    def connected(self) -> bool:
        return not self._gone.is_set()

    async def next_request(self) -> dict[str, Any]:
        """The next message, which must be a JSON object in a text frame (400 if it is not JSON, 422 if not an
        object or not text); `WebSocketDisconnect` once the client has gone."""
        message = await self._messages.get()
        if message is None:
            self._messages.put_nowait(None)  # and for whoever asks again
            raise WebSocketDisconnect(1000)
        self._room.release()
        text = message.get("text")
        if text is None:
            raise Unprocessable("messages must be JSON in text frames, not binary")
        request = load_json(text, bad=BadRequest)
        if not isinstance(request, dict):
            raise Unprocessable("the message must be a JSON object")
        return request

    async def while_connected(self, answer: Coroutine[Any, Any, T]) -> T:
        """`answer`'s result, unless the client leaves first: `answer` is then cancelled at once and this raises
        `WebSocketDisconnect`. Cancelling this cancels `answer` too."""
        task = asyncio.create_task(answer)
        gone = asyncio.create_task(self._gone.wait())
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        if task.cancelled():
            raise WebSocketDisconnect(1001)
        return task.result()
