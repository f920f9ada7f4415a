"""A bounded load test on the real stack: 200 generations from 16 concurrent clients (half MCP
over streamable HTTP, half REST), tiny model at 64x64 and 2-4 steps. Every request ends in
success or in the documented busy answer; nothing leaks (tasks in flight, file descriptors,
temp files); the server's memory returns near its idle level."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp import Client

from scripts.servers import ServerProcess, metric, start_mcp_server

REQUESTS = 200
CLIENTS = 16
# Two generations at a time and thirteen waiting: 16 clients overflow that by one, so the busy
# answer is exercised too. A client told "busy" backs off (a real one honours Retry-After).
SLOTS, QUEUE = 2, 13
BACKOFF_SECONDS = 2.0


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


@pytest.fixture(scope="module")
def loaded_server(
    small_runtime: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Path, Path]]:
    root = tmp_path_factory.mktemp("load")
    tmp, store = root / "tmp", root / "store"
    tmp.mkdir()
    with start_mcp_server(
        root,
        DIFFUSERS_RUNTIME_URL=small_runtime.url,
        IMAGE_STORE_DIR=str(store),
        # Anything the server or its libraries write to a temp dir lands here, to be counted.
        TMPDIR=str(tmp),
        MAX_CONCURRENT_PER_RUNTIME=str(SLOTS),
        MAX_QUEUE_PER_RUNTIME=str(QUEUE),
        # Sixteen clients from one loopback address: as many users, not one greedy client
        # (tests/discovery/test_scale_out.py checks the per-client cap).
        MAX_CONCURRENT_PER_CLIENT="0",
        # Per-request logs would dominate the run; warnings and errors still show.
        LOG_LEVEL="WARNING",
    ) as server:
        yield server, tmp, store


def request_fields(rng: random.Random) -> dict:
    return {
        "prompt": f"load test {rng.randrange(10**6)}",
        "num_inference_steps": rng.choice((2, 3, 4)),
        "seed": rng.randrange(2**31),
        "num_images": rng.choice((1, 1, 1, 2)),
    }


async def rest_worker(url: str, jobs: asyncio.Queue, outcomes: list) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        while not jobs.empty():
            fields = jobs.get_nowait()
            n = fields.pop("num_images")
            started = time.monotonic()
            response = await http.post(
                f"{url}/v1/images/generations",
                json={**fields, "n": n, "size": "64x64", "response_format": "url"},
            )
            elapsed = time.monotonic() - started
            if response.status_code == 200:
                body = response.json()
                assert len(body["data"]) == n
                outcomes.append(("rest", "ok", elapsed, [i["id"] for i in body["images"]]))
            elif response.status_code == 429 and int(response.headers["retry-after"]) > 0:
                assert "busy" in response.json()["error"]["message"]
                outcomes.append(("rest", "busy", elapsed, []))
                await asyncio.sleep(BACKOFF_SECONDS)
            else:
                outcomes.append(("rest", f"HTTP {response.status_code}: {response.text}", 0, []))


async def mcp_worker(url: str, jobs: asyncio.Queue, outcomes: list) -> None:
    async with Client(f"{url}/mcp") as client:
        while not jobs.empty():
            fields = jobs.get_nowait()
            started = time.monotonic()
            result = await client.call_tool("generate_image", {**fields, "width": 64, "height": 64})
            elapsed = time.monotonic() - started
            text = result.content[0].text
            if not result.is_error:
                ids = [i["id"] for i in result.structured_content["images"]]
                assert len(ids) == fields["num_images"]
                outcomes.append(("mcp", "ok", elapsed, ids))
            elif "busy" in text:
                outcomes.append(("mcp", "busy", elapsed, []))
                await asyncio.sleep(BACKOFF_SECONDS)
            else:
                outcomes.append(("mcp", f"isError: {text}", 0, []))


async def run_load(url: str) -> list:
    rng = random.Random(6)
    rest_jobs: asyncio.Queue = asyncio.Queue()
    mcp_jobs: asyncio.Queue = asyncio.Queue()
    for index in range(REQUESTS):
        (rest_jobs if index % 2 else mcp_jobs).put_nowait(request_fields(rng))
    outcomes: list = []
    workers = [rest_worker(url, rest_jobs, outcomes) for _ in range(CLIENTS // 2)]
    workers += [mcp_worker(url, mcp_jobs, outcomes) for _ in range(CLIENTS // 2)]
    await asyncio.gather(*workers)
    return outcomes


def wait_for_idle(url: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric(url, "mcp_server_generations_in_flight") == 0 and (
            metric(url, "mcp_server_queue_depth") == 0
        ):
            return
        time.sleep(0.2)
    raise AssertionError("generations still in flight or queued after the load")


def test_200_generations_from_16_clients(
    loaded_server: tuple[ServerProcess, Path, Path], tmp_path: Path
) -> None:
    server, tmp, store = loaded_server
    pid = server.process.pid
    # Warm up: imports, connection pools, the first store write.
    asyncio.run(run_load_small(server.url))
    wait_for_idle(server.url)
    idle = {"rss_mib": rss_mib(pid), "fds": open_fds(pid), "threads": threads(pid)}

    started = time.monotonic()
    outcomes = asyncio.run(run_load(server.url))
    wall = time.monotonic() - started
    wait_for_idle(server.url)
    time.sleep(1)
    after = {"rss_mib": rss_mib(pid), "fds": open_fds(pid), "threads": threads(pid)}

    kinds = Counter(kind for _, kind, _, _ in outcomes)
    others = [o for o in outcomes if o[1] not in ("ok", "busy")]
    assert len(outcomes) == REQUESTS
    assert not others, others[:5]
    assert kinds["ok"] > REQUESTS / 2, kinds
    # Every stored image is there, each as its bytes plus one sidecar; nothing half-written.
    ids = [i for o in outcomes for i in o[3]]
    files = sorted(p.name for p in (store / "images").iterdir())
    assert len(ids) == len(set(ids))
    assert set(files) >= {*ids, *(f"{i}.meta" for i in ids)}
    assert not [name for name in files if name.startswith(".")]
    assert list(tmp.iterdir()) == []
    # No leaked connections or files, no piling threads, memory back near idle.
    assert after["fds"] <= idle["fds"] + 2, (idle, after)
    assert after["threads"] <= idle["threads"] + 4, (idle, after)
    assert after["rss_mib"] <= idle["rss_mib"] * 1.25 + 10, (idle, after)
    assert server.process.poll() is None
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200

    latencies = sorted(e for _, kind, e, _ in outcomes if kind == "ok")
    figures = {
        "requests": REQUESTS,
        "clients": CLIENTS,
        "succeeded": kinds["ok"],
        "busy": kinds["busy"],
        "other_errors": len(others),
        "images": len(ids),
        "wall_seconds": round(wall, 1),
        "p50_seconds": round(statistics.median(latencies), 2),
        "p95_seconds": round(latencies[int(len(latencies) * 0.95) - 1], 2),
        "idle": idle,
        "after": after,
        "peak_rss_mib": _peak_rss_mib(pid),
    }
    (tmp_path / "load.json").write_text(json.dumps(figures, indent=2))
    print("load figures:", json.dumps(figures))


def _peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


async def run_load_small(url: str) -> None:
    async with httpx.AsyncClient(timeout=60) as http, Client(f"{url}/mcp") as client:
        for seed in range(2):
            fields = {"prompt": "warm up", "seed": seed, "num_inference_steps": 2}
            rest = await http.post(f"{url}/v1/images/generations", json={**fields, "size": "64x64"})
            assert rest.status_code == 200, rest.text
            result = await client.call_tool("generate_image", {**fields, "width": 64, "height": 64})
            assert not result.is_error, result.content
