"""Bounded concurrency with a bounded wait queue, one per model."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from mcp_server import metrics
from mcp_server.errors import BusyError


class Limiter:
    def __init__(self, name: str, concurrency: int, queue: int) -> None:
        self.name = name
        self.max_queue = queue
        self._slots = asyncio.Semaphore(concurrency)
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked() and self.waiting >= self.max_queue:
            raise BusyError(self.name, self.waiting)
        self.waiting += 1
        metrics.QUEUE_DEPTH.labels(self.name).set(self.waiting)
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
            metrics.QUEUE_DEPTH.labels(self.name).set(self.waiting)
        try:
            yield
        finally:
            self._slots.release()
