"""Scale-out without a cluster: runtime replicas (one torch thread each, no batching) behind a
round-robin proxy that stands in for the predictor Service, the fake API server listing the
InferenceService and the EndpointSlice of its pods, and a real MCP server process with
discovery on, driven over REST.

- Throughput grows from one replica to two, and admission with it (the MCP server counts the
  ready pods). The figure needs the cores to itself: on a loaded machine the ratio shrinks.
- A replica killed mid-run (kill -9): the requests it had queued but not started are sent
  again and served by the other replica; the one it was running fails with a message that
  says so; nothing else fails.
- The per-client cap holds (its own 429) while other clients are served, and a full queue is
  still a 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from scripts.proxy import FaultProxy, fault_proxy
from scripts.servers import ServerProcess, metric, start_mcp_server, start_runtime
from tests.discovery.conftest import FakeCluster, discovery_env

# One torch thread and one image per pipeline call: each replica is one unit of compute, so
# two of them on two cores can double the work done.
REPLICA = {"TORCH_THREADS": "1", "MAX_BATCH_SIZE": "1"}
# About 0.2 s per image on one thread: long enough that the MCP server's own share is small.
WORK = {"size": "128x128", "num_inference_steps": 8}
# About a second: long enough to kill a replica, or hold a slot, mid-generation.
LONG = {"size": "256x256", "num_inference_steps": 20}
REQUESTS = 24
CLIENTS = 4


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(start_runtime(tmp_path_factory.mktemp(f"replica-{i}"), **REPLICA))
            for i in range(2)
        ]


@contextlib.asynccontextmanager
async def mcp_server(cluster: FakeCluster, tmp_path: Path, **env: str) -> AsyncIterator[str]:
    """The MCP server with discovery on, against the fake API server."""
    settings = {**discovery_env(cluster, tmp_path), **env}
    with contextlib.ExitStack() as stack:
        # From a thread: the fake API server lives on this event loop and must keep answering.
        server = await asyncio.to_thread(
            stack.enter_context, start_mcp_server(tmp_path, **settings)
        )
        yield server.url


def behind(cluster: FakeCluster, proxy: FaultProxy, ready: list[bool]) -> None:
    """The InferenceService `painter` at the proxy, its predictor's pods READY or not."""
    cluster.put("painter", url=proxy.url)
    cluster.put_endpoints("painter", ready)


async def runtime_state(http: httpx.AsyncClient, url: str) -> dict:
    """painter's entry in /health?details=true; empty until discovery has found it."""
    details = (await http.get(f"{url}/health", params={"details": "true"})).json()
    return next((r for r in details["runtimes"] if r["model"] == "painter"), {})


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def replicas_are(http: httpx.AsyncClient, url: str, replicas: int) -> bool:
    return (await runtime_state(http, url)).get("replicas") == replicas


async def sees(http: httpx.AsyncClient, url: str, proxy: FaultProxy, replicas: int) -> None:
    """Wait until the MCP server serves painter at PROXY with REPLICAS counted."""

    async def check() -> bool:
        # The count and the address change in separate discovery passes: wait for both.
        state = await runtime_state(http, url)
        models = (await http.get(f"{url}/v1/models")).json()["data"]
        return (
            state.get("replicas") == replicas
            and state.get("ready") is True
            and any(m.get("runtime_url") == proxy.url for m in models)
        )

    await until(check)


def body(prompt: str, seed: int, fields: dict) -> dict:
    return {"prompt": prompt, "seed": seed, "model": "painter", **fields}


async def post(http: httpx.AsyncClient, url: str, payload: dict, client: str) -> httpx.Response:
    return await http.post(
        f"{url}/v1/images/generations", json=payload, headers={"X-Forwarded-For": client}
    )


async def images_per_second(http: httpx.AsyncClient, url: str, label: str) -> float:
    for seed in range(2):  # warm both replicas' first-call paths
        assert (await post(http, url, body("warm", seed, WORK), "10.0.0.1")).status_code == 200
    todo = list(range(REQUESTS))

    async def worker() -> None:
        while todo:
            seed = todo.pop()
            response = await post(http, url, body(f"{label} {seed}", seed, WORK), "10.0.0.1")
            assert response.status_code == 200, response.text

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    return REQUESTS / (time.monotonic() - started)


@pytest.mark.asyncio
async def test_throughput_and_admission_grow_with_replicas(cluster, replicas, tmp_path):
    port = [int(r.url.rsplit(":", 1)[1]) for r in replicas]
    async with (
        httpx.AsyncClient(timeout=120) as http,
        mcp_server(cluster, tmp_path, MAX_CONCURRENT_PER_RUNTIME="2") as url,
    ):
        with fault_proxy(port[0]) as alone, fault_proxy(*port) as both:
            figures: dict[int, list[float]] = {1: [], 2: []}
            # Rounds alternate one and two replicas, so that drift in the machine's speed
            # weighs on both alike; the autoscaler's scale-up and scale-down, in effect.
            for round_ in range(3):
                for count, proxy in ((1, alone), (2, both)):
                    behind(cluster, proxy, [True] * count)
                    await sees(http, url, proxy, count)
                    assert (await runtime_state(http, url))["slots"] == 2 * count
                    figures[count].append(await images_per_second(http, url, f"{count}r{round_}"))
        one, two = (statistics.median(figures[n]) for n in (1, 2))
        print(f"\nimages/s: 1 replica {one:.2f}, 2 replicas {two:.2f} ({two / one:.2f}x)")
        # Two single-thread replicas on two cores, with the MCP server and the clients
        # sharing them: well above one replica, short of twice.
        assert two / one >= 1.3, figures


@pytest.mark.asyncio
async def test_a_full_client_share_and_a_full_queue_are_clean_429s(cluster, replicas, tmp_path):
    async with (
        httpx.AsyncClient(timeout=120) as http,
        mcp_server(
            cluster,
            tmp_path,
            MAX_CONCURRENT_PER_RUNTIME="1",
            MAX_QUEUE_PER_RUNTIME="1",
            MAX_CONCURRENT_PER_CLIENT="2",
        ) as url,
    ):
        with fault_proxy(*(int(r.url.rsplit(":", 1)[1]) for r in replicas)) as proxy:
            behind(cluster, proxy, [True, True])
            await sees(http, url, proxy, 2)
            # Client A asks for three at once: two take the two replicas' slots.
            greedy = [
                asyncio.create_task(post(http, url, body("a", i, LONG), "10.0.0.1"))
                for i in range(3)
            ]
            refused = await next(asyncio.as_completed(greedy))
            assert refused.status_code == 429, refused.text
            assert refused.headers["Retry-After"] == "5"
            error = refused.json()["error"]
            assert error["code"] == "client_limit"
            assert error["message"].startswith(
                "Too many generations from this client (10.0.0.1): it already has 2 running"
            )
            # Others still get in: client B takes the two queue places (one per replica)...
            others = [
                asyncio.create_task(post(http, url, body("b", i, LONG), "10.0.0.2"))
                for i in range(2)
            ]

            async def queue_full() -> bool:
                return (await runtime_state(http, url))["waiting"] == 2

            await until(queue_full)
            # ...and then the queue is full for everyone: the model's own 429.
            busy = await post(http, url, body("c", 0, LONG), "10.0.0.3")
            assert busy.status_code == 429 and busy.headers["Retry-After"] == "5"
            assert busy.json()["error"]["code"] == "busy"
            assert (
                "the 2 generation slots of its 2 runtime replica(s) are in use"
                in (busy.json()["error"]["message"])
            )
            statuses = sorted(r.status_code for r in await asyncio.gather(*greedy, *others))
            assert statuses == [200, 200, 200, 200, 429]
            assert metric(url, "mcp_server_client_limit_rejections_total") == 1


@pytest.mark.asyncio
async def test_a_killed_replica_loses_no_request_it_had_not_started(cluster, replicas, tmp_path):
    survivor, victim = replicas
    async with (
        httpx.AsyncClient(timeout=120) as http,
        mcp_server(
            cluster,
            tmp_path,
            MAX_CONCURRENT_PER_RUNTIME="4",
            MAX_CONCURRENT_PER_CLIENT="0",
        ) as url,
    ):
        with fault_proxy(
            int(survivor.url.rsplit(":", 1)[1]), int(victim.url.rsplit(":", 1)[1])
        ) as proxy:
            behind(cluster, proxy, [True, True])
            await sees(http, url, proxy, 2)
            requests = [
                asyncio.create_task(post(http, url, body("k", i, LONG), f"10.0.1.{i}"))
                for i in range(8)
            ]

            # Kill the victim while it runs one generation and has more waiting behind it.
            async def busy_with_a_queue() -> bool:
                running = metric(victim.url, "diffusers_requests_in_flight")
                return running >= 1 and metric(victim.url, "diffusers_requests_queued") >= 1

            await until(busy_with_a_queue)
            victim.process.kill()
            victim.process.wait(10)
            # About a second later Kubernetes has taken the pod out of the Service (kube-proxy)
            # and out of its EndpointSlice (the MCP server's count).
            await asyncio.sleep(1)
            proxy.set_upstreams(int(survivor.url.rsplit(":", 1)[1]))
            cluster.put_endpoints("painter", [True, False])
            answers = await asyncio.gather(*requests)
            await until(lambda: replicas_are(http, url, 1))

        failed = [r for r in answers if r.status_code != 200]
        # At most the one generation it was running (one image per call) is lost...
        assert len(failed) <= 1, [r.text for r in failed]
        for response in failed:
            assert response.status_code == 503
            error = response.json()["error"]
            assert error["code"] == "replica_lost"
            assert "became unavailable after step" in error["message"]
            assert "It was not sent to another replica" in error["message"]
        # ...and what it had queued was sent again and served by the survivor.
        assert metric(url, "mcp_server_runtime_retries_total", model="painter") >= 1
        assert len(answers) - len(failed) >= 7
