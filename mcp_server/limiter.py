"""Admission: bounded concurrency with a bounded wait queue per model, sized by the model's
runtime replicas, and a cap on what one client may hold on this server at once."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator

from mcp_server import metrics
from mcp_server.errors import BusyError, ClientBusyError

# Who is asking, for the per-client cap: set per HTTP request by the app's middleware (the
# address the router saw); stdio has one client.
client_var: contextvars.ContextVar[str] = contextvars.ContextVar("client", default="stdio")


class Limiter:
    """Slots and queue places per runtime replica, so that four replicas get four times the
    calls. asyncio.Semaphore cannot be resized when replicas come and go: waiters are served
    first in, first out from a deque of futures instead."""

    def __init__(self, name: str, per_replica: int, queue_per_replica: int) -> None:
        self.name = name
        self._per_replica = per_replica
        self._queue_per_replica = queue_per_replica
        self.replicas = 1
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def capacity(self) -> int:
        return self._per_replica * self.replicas

    @property
    def max_queue(self) -> int:
        return self._queue_per_replica * self.replicas

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def resize(self, replicas: int) -> None:
        """Follow the replicas behind the model; at least one, whose absence the runtime
        client reports better than a queue that never moves would."""
        self.replicas = max(1, replicas)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.running < self.capacity:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.running += 1
                waiter.set_result(None)
        metrics.QUEUE_DEPTH.labels(self.name).set(self.waiting)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.running < self.capacity and not self._waiters:
            self.running += 1
        else:
            if self.waiting >= self.max_queue:
                raise BusyError(self.name, self.replicas, self.capacity, self.waiting)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            metrics.QUEUE_DEPTH.labels(self.name).set(self.waiting)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    # Handed a slot in the same instant: give it to the next in line.
                    self.running -= 1
                self._wake()
                raise
        try:
            yield
        finally:
            self.running -= 1
            self._wake()


class ClientLimits:
    """At most LIMIT generations running or waiting per client on this server (0: no cap), so
    that one client cannot fill every slot and queue place while others wait."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        client = client_var.get()
        if self.limit and self._held[client] >= self.limit:
            metrics.CLIENT_REJECTIONS.inc()
            raise ClientBusyError(client, self.limit)
        self._held[client] += 1
        try:
            yield
        finally:
            self._held[client] -= 1
            if not self._held[client]:
                del self._held[client]
