"""`python -m mcp_server --transport stdio` driven by the mcp SDK's stdio client."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from mcp import Client, StdioServerParameters

from scripts.servers import REPO, ServerProcess
from tests.helpers import SMALL, image_size


def test_stdio_lists_tools_and_generates(
    runtime: ServerProcess, tmp_path: pytest.TempPathFactory
) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_server", "--transport", "stdio"],
        cwd=REPO,
        env={
            **os.environ,
            "DIFFUSERS_RUNTIME_URL": runtime.url,
            "IMAGE_STORE_DIR": str(tmp_path),
            "MCP_AUTH_TOKEN": "",
            "PUBLIC_URL": "",
        },
    )
    progress: list[float] = []

    async def on_progress(done: float, _total: float | None, _message: str | None) -> None:
        progress.append(done)

    async def scenario():
        async with Client(params, read_timeout_seconds=60) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            result = await client.call_tool(
                "generate_image",
                {"prompt": "a blue sphere", **SMALL, "height": 128},
                progress_callback=on_progress,
            )
            link = next(b for b in result.content if b.type == "resource_link")
            resource = await client.read_resource(link.uri)
            return tools, result, resource

    tools, result, resource = asyncio.run(scenario())
    assert {"generate_image", "list_models", "start_generation"} <= tools
    assert not result.is_error, result.content
    assert progress == [1, 2, 3, 4]
    inline = next(b for b in result.content if b.type == "image")
    assert image_size(inline.data) == (64, 128)
    assert image_size(resource.contents[0].blob) == (64, 128)
    # No HTTP server behind stdio: the image is reached through its resource URI.
    assert result.structured_content["images"][0]["url"] is None
