"""Two replicas share an S3-compatible bucket (a real moto server process): a link or a job
from one replica is served by the other, and images expire after the TTL."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from mcp import Client

from scripts.servers import ServerProcess, free_port, run_server, start_mcp_server
from tests.helpers import LONG, SMALL, image_size

BUCKET = "diffusers-images"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def moto_with_bucket(log_dir: Path) -> Iterator[ServerProcess]:
    """A real S3-compatible server (moto) on a free loopback port, with BUCKET created."""
    port = free_port()
    with run_server(
        ["-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        port=port,
        ready_path="/",
        log_path=log_dir / "moto.log",
        timeout=60,
    ) as server:
        boto3.client("s3", endpoint_url=server.url, **_boto_credentials()).create_bucket(
            Bucket=BUCKET
        )
        yield server


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_with_bucket(tmp_path_factory.mktemp("moto")) as server:
        yield server.url


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


@pytest.fixture(scope="module")
def replicas(
    s3: str, runtime: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    env = {
        **CREDENTIALS,
        "DIFFUSERS_RUNTIME_URL": runtime.url,
        "IMAGE_STORE": "s3",
        "S3_BUCKET": BUCKET,
        "S3_ENDPOINT_URL": s3,
        "S3_PREFIX": "test/",
        # A fast heartbeat, so a cancel left by one replica reaches the owner quickly.
        "JOB_STALE_SECONDS": "2",
    }
    log_dir = tmp_path_factory.mktemp("s3-replicas")
    with (
        start_mcp_server(log_dir, **env) as first,
        start_mcp_server(log_dir, **env, IMAGE_TTL_SECONDS="2") as second,
    ):
        yield first, second


def test_an_image_stored_by_one_replica_is_served_by_the_other(
    replicas: tuple[ServerProcess, ServerProcess], s3: str
) -> None:
    first, second = replicas
    made = httpx.post(
        f"{first.url}/v1/images/generations",
        json={"prompt": "shared", "size": "64x64", "num_inference_steps": 4},
        timeout=60,
    )
    assert made.status_code == 200, made.text
    image_id = made.json()["images"][0]["id"]
    served = httpx.get(f"{second.url}/v1/images/{image_id}", timeout=10)
    assert served.status_code == 200 and image_size(served.content) == (64, 64)
    keys = [
        item["Key"]
        for item in boto3.client("s3", endpoint_url=s3, **_boto_credentials()).list_objects_v2(
            Bucket=BUCKET, Prefix="test/images/"
        )["Contents"]
    ]
    assert f"test/images/{image_id}" in keys


def test_a_job_started_on_one_replica_is_answered_by_the_other(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = replicas

    async def scenario():
        async with Client(f"{first.url}/mcp") as client:
            started = await client.call_tool("start_generation", {"prompt": "job", **SMALL})
        async with Client(f"{second.url}/mcp") as client:
            return await client.call_tool(
                "get_generation",
                {"job_id": started.structured_content["job_id"], "wait_seconds": 30},
            )

    done = asyncio.run(scenario())
    assert done.structured_content["status"] == "succeeded", done.content
    assert image_size(next(b for b in done.content if b.type == "image").data) == (64, 64)


def test_images_expire_after_the_ttl(replicas: tuple[ServerProcess, ServerProcess]) -> None:
    _, short_lived = replicas
    made = httpx.post(
        f"{short_lived.url}/v1/images/generations",
        json={"prompt": "brief", "size": "64x64", "num_inference_steps": 4},
        timeout=60,
    ).json()
    url = made["data"][0]["url"]
    assert httpx.get(url, timeout=10).status_code == 200
    time.sleep(2.5)
    expired = httpx.get(url, timeout=10)
    assert expired.status_code == 404 and "expired" in expired.json()["error"]["message"]


def test_a_job_is_cancelled_from_another_replica(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = replicas

    async def scenario():
        async with Client(f"{first.url}/mcp") as owner:
            started = await owner.call_tool("start_generation", {"prompt": "stop me", **LONG})
            job_id = started.structured_content["job_id"]
            poll = {"job_id": job_id, "wait_seconds": 0}
            while (await owner.call_tool("get_generation", poll)).structured_content["step"] < 2:
                await asyncio.sleep(0.1)
        async with Client(f"{second.url}/mcp") as other:
            await other.call_tool("cancel_generation", {"job_id": job_id})
            return await other.call_tool("get_generation", {"job_id": job_id, "wait_seconds": 10})

    state = asyncio.run(scenario()).structured_content
    assert state["status"] == "cancelled", state
    assert state["step"] < 100
