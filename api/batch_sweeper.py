"""`BatchSweeper`: advances every open batch every BATCH_SWEEP_INTERVAL_SECONDS.

Started and stopped by the app's lifespan, in every API process; of those, the first to ask in an
interval sweeps it (`BatchStore.take_sweep_turn`), so the cost of a sweep does not grow with the number
of processes. Should two ever sweep at once (a sweep longer than the interval), every change a sweep
makes to a batch is a compare-and-set (`api/batch_service.py`), so they never both make the same one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from api.batch_service import BatchService

log = logging.getLogger(__name__)


class BatchSweeper:
    def __init__(self, service: BatchService, interval: float) -> None:
        self.service = service
        self.interval = interval
        self._stopping = asyncio.Event()
        self._listed = False  # whether the batches of the previous version are listed as open
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batch-sweeper")

    async def stop(self, grace: float = 10.0) -> None:
        """Let a sweep under way finish (up to `grace` seconds; a batch left `finalizing` is taken over by
        another sweeper once its lease runs out), then end."""
        self._stopping.set()
        if self._task is None:
            return
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            try:
                await self.tick()
            except Exception:  # Redis away for a moment: try again next time
                log.exception("the batch sweep failed")

    async def tick(self) -> bool:
        """Sweep, if this process is the first to ask this interval; whether it did."""
        if not await self.service.batches.take_sweep_turn(self.interval):
            return False
        if not self._listed:
            await self.service.list_unlisted_open()
            self._listed = True
        await self.service.sweep()
        return True
