"""Agent frameworks as clients. openai-agents (over HTTP) converts every tool to OpenAI's
strict mode, its default, and the converted tools work: a call with every optional field null
draws, its image comes back, and a bad argument gives an error the model can act on. fastmcp's
client (over stdio, the way desktop hosts launch servers) does the same with every property
sent, reads the full image through its resource, and gets a field error. pydantic-ai's OpenAI
schema transformer takes every tool in strict mode and keeps the optional ones nullable.

langchain-mcp-adapters 0.3 pins mcp<2 (this server's SDK is 2.x), and llama-index-tools-mcp
brings the large llama-index-core: each runs in a venv of its own (`.cache/<name>-venv`, made
here from clients/requirements-<name>.txt) against the server over HTTP, langchain with its
own strict conversion (`strict=True`)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from agents.mcp import MCPServerStreamableHttp, MCPUtil
from agents.run_context import RunContextWrapper
from fastmcp import Client
from fastmcp.client.transports import StdioTransport
from mcp import Client as SDKClient
from pydantic_ai.profiles.openai import OpenAIJsonSchemaTransformer

from scripts.servers import REPO, ServerProcess

CLIENTS = REPO / "tests" / "mcp_server" / "clients"


def test_openai_agents_converts_every_tool_to_strict_mode_and_calls_them(
    mcp_server: ServerProcess,
) -> None:
    async def scenario():
        params = {"url": f"{mcp_server.url}/mcp", "timeout": 30}
        async with MCPServerStreamableHttp(params, client_session_timeout_seconds=60) as server:
            tools = {tool.name: tool for tool in await server.list_tools()}
            converted = {
                name: MCPUtil.to_function_tool(tool, server, convert_schemas_to_strict=True)
                for name, tool in tools.items()
            }
            generate = converted["generate_image"]
            # What a strict-mode model sends: every property, null where it has no opinion.
            args = dict.fromkeys(generate.params_json_schema["properties"])
            args |= {"prompt": "a red circle", "width": 64, "height": 64, "num_inference_steps": 2}
            context = RunContextWrapper(None)
            drawn = await MCPUtil.invoke_mcp_tool(
                server, tools["generate_image"], context, json.dumps(args)
            )
            wrong = await MCPUtil.invoke_mcp_tool(
                server, tools["generate_image"], context, json.dumps({**args, "width": "wide"})
            )
            listed = await MCPUtil.invoke_mcp_tool(server, tools["list_models"], context, "{}")
            return converted, drawn, wrong, listed

    converted, drawn, wrong, listed = asyncio.run(scenario())
    assert {name for name, tool in converted.items() if not tool.strict_json_schema} == set()
    assert len(converted) == 6
    kinds = [block["type"] for block in drawn]
    assert kinds[0] == "text" and "image" in kinds, kinds
    assert "64x64" in drawn[0]["text"]
    assert wrong["text"].startswith("Invalid arguments for generate_image: width:")
    assert "errors.pydantic.dev" not in wrong["text"]
    assert json.loads(listed["text"])["models"][0]["ready"] is True


def test_fastmcp_over_stdio_calls_with_every_field_null_and_reads_the_image(
    runtime: ServerProcess, tmp_path
) -> None:
    transport = StdioTransport(
        command=sys.executable,
        args=["-m", "mcp_server", "--transport", "stdio"],
        env={
            **os.environ,
            "DIFFUSERS_RUNTIME_URL": runtime.url,
            "IMAGE_STORE_DIR": str(tmp_path),
            "MCP_AUTH_TOKEN": "",
            "PUBLIC_URL": "",
        },
        cwd=str(REPO),
    )

    async def scenario():
        async with Client(transport) as client:
            tools = {tool.name: tool for tool in await client.list_tools()}
            args = dict.fromkeys(tools["generate_image"].input_schema["properties"])
            args |= {"prompt": "a red circle", "width": 64, "height": 64, "num_inference_steps": 2}
            drawn = await client.call_tool("generate_image", args, raise_on_error=False)
            image = await client.read_resource(drawn.structured_content["images"][0]["uri"])
            wrong = await client.call_tool(
                "generate_image", {**args, "output_format": "gif"}, raise_on_error=False
            )
            return drawn, image, wrong

    drawn, image, wrong = asyncio.run(scenario())
    assert not drawn.is_error and drawn.structured_content["width"] == 64
    assert image[0].blob  # the full PNG, as base64
    assert wrong.is_error
    assert "output_format: Input should be 'png', 'jpeg' or 'webp'" in wrong.content[0].text


def test_pydantic_ai_takes_every_tool_in_openais_strict_mode(mcp_server: ServerProcess) -> None:
    async def scenario():
        async with SDKClient(f"{mcp_server.url}/mcp") as client:
            return (await client.list_tools()).tools

    for tool in asyncio.run(scenario()):
        schema = tool.input_schema
        strict = OpenAIJsonSchemaTransformer(json.loads(json.dumps(schema)), strict=True).walk()
        assert strict["additionalProperties"] is False, tool.name
        assert set(strict["required"]) == set(strict["properties"]), tool.name
        for name in set(schema["properties"]) - set(schema.get("required", ())):
            if "default" in schema["properties"][name]:
                continue  # a default the transformer drops: the model then sends a value
            prop = strict["properties"][name]
            kinds = prop.get("type", [])
            nullable = "null" in kinds or {"type": "null"} in prop.get("anyOf", [])
            assert nullable, (tool.name, name, prop)


def _client_run(name: str, url: str) -> dict:
    """clients/NAME_client.py run in its own venv against URL; what it printed."""
    venv = REPO / ".cache" / f"{name.replace('_', '-')}-venv"
    python = venv / "bin" / "python"
    requirements = CLIENTS / f"requirements-{name.replace('_', '-')}.txt"
    marker = venv / ".installed"
    if not marker.exists() or marker.read_text() != requirements.read_text():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        install = [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)]
        subprocess.run(install, check=True, timeout=900)
        marker.write_text(requirements.read_text())
    run = subprocess.run(
        [str(python), str(CLIENTS / f"{name}_client.py"), url],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_langchain_converts_every_tool_to_strict_mode_and_calls_them(
    mcp_server: ServerProcess,
) -> None:
    found = _client_run("langchain", f"{mcp_server.url}/mcp")
    assert found["strict"] == dict.fromkeys(found["strict"], True) and len(found["strict"]) == 6
    assert "Generated 1 image(s)" in found["drawn"] and "'type': 'image'" in found["drawn"]
    assert "Invalid arguments for generate_image: width:" in found["wrong"]


def test_llama_index_lists_describes_and_calls_the_tools(mcp_server: ServerProcess) -> None:
    found = _client_run("llama_index", f"{mcp_server.url}/mcp")
    assert len(found["tools"]) == 6 and "generate_image" in found["tools"]
    assert "Generated 1 image(s)" in found["drawn"] and "ImageContent" in found["drawn"]
    assert "Invalid arguments for generate_image: width:" in found["wrong"]
