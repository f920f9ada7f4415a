"""A real MCP server process with discovery on, configured through a standard kubeconfig that
points at the fake API server, whose InferenceService status URL is the real tiny runtime:
an MCP client lists the discovered models and generates on one by its InferenceService
name; `python - models < deploy/checks.py` (what `make check-services` runs in the pod)
shows them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import sys
import time
from urllib.parse import urlsplit

import httpx
import pytest
from mcp import Client

from scripts.servers import REPO, start_mcp_server
from tests.discovery.conftest import discovery_env
from tests.helpers import SMALL, image_size

BROKEN = "Revision broken-predictor-00001 failed: container kserve-container OOMKilled"


def text_of(result) -> str:
    return " ".join(block.text for block in result.content if block.type == "text")


async def list_models(client: Client) -> dict[str, dict]:
    result = await client.call_tool("list_models", {})
    assert not result.is_error, text_of(result)
    return {m["name"]: m for m in result.structured_content["models"]}


@pytest.mark.asyncio
async def test_mcp_server_serves_discovered_inference_services(cluster, runtime, tmp_path):
    cluster.put("painter", url=runtime.url)
    cluster.put("broken", url="http://broken-predictor.default.svc", ready=False, message=BROKEN)
    env = discovery_env(cluster, tmp_path)
    with contextlib.ExitStack() as stack:
        # Started from a thread: the fake API server lives on this event loop and must keep
        # answering while the server process starts.
        server = await asyncio.to_thread(stack.enter_context, start_mcp_server(tmp_path, **env))
        try:
            async with Client(f"{server.url}/mcp") as client:
                models = await list_models(client)
                assert set(models) == {"painter", "broken"}
                assert models["painter"]["ready"] is True
                assert models["painter"]["runtime_url"] == runtime.url
                assert models["broken"]["error"] == f"unavailable: not Ready ({BROKEN})"

                result = await client.call_tool(
                    "generate_image",
                    {"prompt": "a red hat", "model": "painter", **SMALL, "seed": 5},
                )
                assert not result.is_error, text_of(result)
                assert result.structured_content["model"] == "painter"
                (image,) = [block for block in result.content if block.type == "image"]
                assert image_size(base64.b64decode(image.data)) == (64, 64)

                refused = await client.call_tool(
                    "generate_image", {"prompt": "a red hat", "model": "broken", **SMALL, "seed": 5}
                )
                assert refused.is_error
                assert f"Model 'broken' is unavailable: not Ready ({BROKEN})" in text_of(refused)

                # A new InferenceService shows up in list_models within seconds.
                started = time.monotonic()
                cluster.put("late", url=runtime.url)
                while "late" not in await list_models(client):
                    assert time.monotonic() - started < 5, "late never appeared"
                    await asyncio.sleep(0.1)

            # As `make check-services` runs it in the pod: piped in, the port from PORT.
            listing = await asyncio.create_subprocess_exec(
                sys.executable, "-", "models",
                cwd="/",
                env={**os.environ, "PORT": str(urlsplit(server.url).port)},
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            script = (REPO / "deploy" / "checks.py").read_bytes()
            output = (await listing.communicate(script))[0].decode()
            assert listing.returncode == 0, output
            lines = output.splitlines()
            painter = next(line for line in lines if line.strip().startswith("painter"))
            assert "isvc default/painter" in painter and runtime.url in painter
            broken = next(line for line in lines if line.strip().startswith("broken"))
            assert f"unavailable: not Ready ({BROKEN})" in broken
            assert "discovery: label diffusers-mcp.io/expose=true via " in output
            assert "namespace default: last listed 20" in output

            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{server.url}/ready")).json() == {"ready": True}
                details = await http.get(f"{server.url}/health", params={"details": "true"})
            assert details.json()["ready"] is True
            assert details.json()["discovery"]["namespaces"]["default"]["error"] is None
        finally:
            await asyncio.to_thread(stack.close)
    # The kubeconfig's credentials are what the server sent.
    tokens = {r.headers.get("Authorization") for r in cluster.list_requests()}
    assert tokens == {"Bearer reader-token"}
