"""Admission in one process: slots and queue places per runtime replica, first in first out,
following the replicas as they change; and the per-client cap."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from mcp_server.app import client_of
from mcp_server.errors import BusyError, ClientBusyError
from mcp_server.limiter import ClientLimits, Limiter, client_var


async def hold(limiter: Limiter, order: list[int], index: int, release: asyncio.Event) -> None:
    async with limiter.slot():
        order.append(index)
        await release.wait()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_slots_and_queue_scale_with_replicas_and_a_full_queue_is_busy():
    limiter = Limiter("painter", per_replica=2, queue_per_replica=1)
    limiter.resize(3)
    assert (limiter.capacity, limiter.max_queue) == (6, 3)
    release, order = asyncio.Event(), []
    tasks = [asyncio.create_task(hold(limiter, order, i, release)) for i in range(9)]
    await settle()
    assert order == [0, 1, 2, 3, 4, 5] and limiter.waiting == 3
    with pytest.raises(BusyError) as busy:
        async with limiter.slot():
            pass
    assert busy.value.status == 429 and busy.value.retry_after
    assert "the 6 generation slots of its 3 runtime replica(s) are in use" in str(busy.value)
    assert "3 requests are already waiting" in str(busy.value)
    release.set()
    await asyncio.gather(*tasks)
    assert order == list(range(9)) and limiter.running == 0


@pytest.mark.asyncio
async def test_a_new_replica_admits_the_waiting_at_once_and_a_lost_one_admits_fewer():
    limiter = Limiter("painter", per_replica=1, queue_per_replica=4)
    release, order = asyncio.Event(), []
    tasks = [asyncio.create_task(hold(limiter, order, i, release)) for i in range(3)]
    await settle()
    assert order == [0]
    limiter.resize(3)  # the autoscaler added two replicas
    await settle()
    assert order == [0, 1, 2] and limiter.waiting == 0
    limiter.resize(1)  # scaled back down: the three running keep going, the next one waits
    late = asyncio.create_task(hold(limiter, order, 3, release))
    await settle()
    assert order == [0, 1, 2] and limiter.waiting == 1
    limiter.resize(0)  # no ready replica counted: still one, so the error comes from the call
    assert limiter.capacity == 1
    release.set()
    await asyncio.gather(*tasks, late)
    assert order == [0, 1, 2, 3]


@pytest.mark.asyncio
async def test_a_cancelled_waiter_leaves_its_place_and_keeps_no_slot():
    limiter = Limiter("painter", per_replica=1, queue_per_replica=2)
    release, order = asyncio.Event(), []
    first = asyncio.create_task(hold(limiter, order, 0, release))
    second = asyncio.create_task(hold(limiter, order, 1, release))
    third = asyncio.create_task(hold(limiter, order, 2, release))
    await settle()
    second.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await second
    assert limiter.waiting == 1
    release.set()
    await asyncio.gather(first, third)
    assert order == [0, 2] and limiter.running == 0 and limiter.waiting == 0


def test_one_client_holds_at_most_its_share_and_others_are_not_affected():
    limits = ClientLimits(2)
    with contextlib.ExitStack() as stack:
        client_var.set("10.0.0.1")
        stack.enter_context(limits.hold())
        stack.enter_context(limits.hold())
        with pytest.raises(ClientBusyError) as refused:
            stack.enter_context(limits.hold())
        assert refused.value.status == 429 and refused.value.code == "client_limit"
        assert str(refused.value).startswith(
            "Too many generations from this client (10.0.0.1): it already has 2 running or "
            "waiting on this server"
        )
        assert "MAX_CONCURRENT_PER_CLIENT" in str(refused.value)
        client_var.set("10.0.0.2")
        with limits.hold():
            pass
    client_var.set("10.0.0.1")
    with limits.hold():  # released: room again
        pass
    unlimited = ClientLimits(0)
    with contextlib.ExitStack() as stack:
        for _ in range(50):
            stack.enter_context(unlimited.hold())


def test_the_client_is_the_address_the_router_saw():
    # The router appends the address it saw; what comes before it the client wrote itself.
    forged = {b"x-forwarded-for": b"10.9.9.9, 192.0.2.7"}
    assert client_of({"client": ("10.128.2.5", 40000)}, forged) == "192.0.2.7"
    assert client_of({"client": ("10.128.2.5", 40000)}, {}) == "10.128.2.5"
    assert client_of({}, {}) == "unknown"
