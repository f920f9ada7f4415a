"""The image store becomes unavailable under a running server: a local directory that cannot
be written, an S3 endpoint (a real moto server behind a fault proxy) that resets connections.
Generations then fail with a clear error naming the store; every image already reported as
stored is still there, byte for byte, once the store is back; the server keeps serving."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp import Client

from scripts.proxy import FaultProxy, fault_proxy
from scripts.servers import ServerProcess, start_mcp_server
from tests.mcp_server.test_s3_store import BUCKET, CREDENTIALS, moto_with_bucket

SMALL = {"size": "64x64", "num_inference_steps": 2}


def generate(url: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/images/generations",
        json={"prompt": "a stored image", "response_format": "b64_json", **SMALL},
        timeout=60,
    )


def stored(url: str, response: httpx.Response) -> tuple[str, bytes]:
    """The id the server reported and the bytes it returned inline."""
    body = response.json()
    return body["images"][0]["id"], base64.b64decode(body["data"][0]["b64_json"])


async def mcp_generate(url: str):
    async with Client(f"{url}/mcp") as client:
        await client.list_tools()
        return await client.call_tool(
            "generate_image", {"prompt": "a stored image", "width": 64, "height": 64}
        )


def assert_store_failure(url: str, named: str) -> None:
    failed = generate(url)
    assert failed.status_code == 503, failed.text
    message = failed.json()["error"]["message"]
    assert "image store" in message and named in message, message
    result = asyncio.run(mcp_generate(url))
    assert result.is_error
    assert "image store" in result.content[0].text and named in result.content[0].text
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200


def assert_kept(url: str, images: list[tuple[str, bytes]]) -> None:
    for image_id, data in images:
        download = httpx.get(f"{url}/v1/images/{image_id}", timeout=10)
        assert download.status_code == 200, (image_id, download.text)
        assert download.content == data


@pytest.fixture(scope="module")
def local_server(
    small_runtime: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Path]]:
    store = tmp_path_factory.mktemp("local-store")
    with start_mcp_server(
        tmp_path_factory.mktemp("local"),
        DIFFUSERS_RUNTIME_URL=small_runtime.url,
        IMAGE_STORE_DIR=str(store),
    ) as server:
        yield server, store


def test_local_store_unavailable(local_server: tuple[ServerProcess, Path]) -> None:
    server, store = local_server
    before = [stored(server.url, generate(server.url)) for _ in range(2)]
    # The images directory turns into a file: writes fail with ENOTDIR even for root.
    images = store / "images"
    aside = store / "images-aside"
    images.rename(aside)
    images.write_bytes(b"")
    try:
        assert_store_failure(server.url, str(store))
    finally:
        images.unlink()
        aside.rename(images)
    assert_kept(server.url, before)
    after = generate(server.url)
    assert after.status_code == 200, after.text
    assert_kept(server.url, [stored(server.url, after)])


@pytest.fixture(scope="module")
def s3_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultProxy]:
    with (
        moto_with_bucket(tmp_path_factory.mktemp("moto")) as moto,
        fault_proxy(int(moto.url.rsplit(":", 1)[1])) as proxy,
    ):
        yield proxy


@pytest.fixture(scope="module")
def s3_server(
    small_runtime: ServerProcess, s3_proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with start_mcp_server(
        tmp_path_factory.mktemp("s3"),
        **CREDENTIALS,
        DIFFUSERS_RUNTIME_URL=small_runtime.url,
        IMAGE_STORE="s3",
        S3_BUCKET=BUCKET,
        S3_ENDPOINT_URL=s3_proxy.url,
    ) as server:
        yield server


@pytest.mark.parametrize("mode", ["reset", "garbage"])
def test_s3_store_unavailable(s3_server: ServerProcess, s3_proxy: FaultProxy, mode: str) -> None:
    before = [stored(s3_server.url, generate(s3_server.url)) for _ in range(2)]
    s3_proxy.set_mode(mode)  # type: ignore[arg-type]
    try:
        assert_store_failure(s3_server.url, BUCKET)
        if mode == "reset":
            # Without its store this server cannot serve: it leaves its Service until the store
            # is back. (A 200 of garbage passes the bucket check, a HEAD: readiness checks that
            # the store answers, reads check what it answers.)
            ready = httpx.get(f"{s3_server.url}/ready", timeout=60)
            assert ready.status_code == 503 and BUCKET in ready.json()["error"]["message"]
        # Reads fail cleanly too while the store is down.
        download = httpx.get(f"{s3_server.url}/v1/images/{before[0][0]}", timeout=60)
        assert download.status_code == 503, download.text
        assert "image store" in download.json()["error"]["message"]
    finally:
        s3_proxy.set_mode("pass")
    assert_kept(s3_server.url, before)
    assert httpx.get(f"{s3_server.url}/ready", timeout=60).status_code == 200
    after = generate(s3_server.url)
    assert after.status_code == 200, after.text
