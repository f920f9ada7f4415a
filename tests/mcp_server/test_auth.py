"""A server with the optional settings on: the bearer token guards REST, MCP and the API docs
(health, readiness and metrics stay open), ALLOWED_HOSTS, and a small inline image budget."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from scripts.servers import ServerProcess, start_mcp_server
from tests.helpers import SMALL, image_size

TOKEN = "s3cret-token-for-tests"
PREVIEW_BUDGET = 1500


@pytest.fixture(scope="module")
def guarded(
    runtime: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with start_mcp_server(
        tmp_path_factory.mktemp("auth"),
        DIFFUSERS_RUNTIME_URL=runtime.url,
        MCP_AUTH_TOKEN=TOKEN,
        ALLOWED_HOSTS="mcp.example.test",
        INLINE_IMAGE_MAX_BYTES=str(PREVIEW_BUDGET),
    ) as server:
        yield server


async def _with_client(url: str, token: str | None, action):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        # httpx2's default 5 s read timeout is shorter than a generation on a busy machine.
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
    ):
        return await action(client)


def _list_tools(url: str, token: str | None) -> list[str]:
    async def names(client: Client) -> list[str]:
        return [tool.name for tool in (await client.list_tools()).tools]

    return asyncio.run(_with_client(url, token, names))


def test_rest_needs_the_token(guarded: ServerProcess) -> None:
    url = f"{guarded.url}/v1/models"
    missing = httpx.get(url)
    assert missing.status_code == 401
    assert "MCP_AUTH_TOKEN" in missing.json()["error"]["message"]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_mcp_needs_the_token(guarded: ServerProcess) -> None:
    assert "generate_image" in _list_tools(guarded.url, TOKEN)
    for token in (None, "wrong"):
        # The SDK client reports a refused connection as a generic error; the log says 401.
        with pytest.raises(Exception):  # noqa: B017
            _list_tools(guarded.url, token)
    assert "POST /mcp -> 401" in guarded.log()
    raw = httpx.post(
        f"{guarded.url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Accept": "application/json, text/event-stream"},
    )
    assert raw.status_code == 401


def test_probes_and_metrics_stay_open(guarded: ServerProcess) -> None:
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(f"{guarded.url}{path}", timeout=10).status_code == 200, path


def test_the_api_docs_need_the_token_too(guarded: ServerProcess) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        refused = httpx.get(f"{guarded.url}{path}", timeout=10)
        assert refused.status_code == 401, path
        assert "MCP_AUTH_TOKEN" in refused.json()["error"]["message"]
        opened = httpx.get(
            f"{guarded.url}{path}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )
        assert opened.status_code == 200, path
    schema = httpx.get(
        f"{guarded.url}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert "/v1/images/generations" in schema.json()["paths"]


def test_mcp_refuses_unknown_host_headers(guarded: ServerProcess) -> None:
    """The SDK's DNS-rebinding protection, configured through ALLOWED_HOSTS."""

    def list_tools_as(host: str) -> httpx.Response:
        return httpx.post(
            f"{guarded.url}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            headers={
                "Host": host,
                "Authorization": f"Bearer {TOKEN}",
                "Accept": "application/json, text/event-stream",
                "MCP-Protocol-Version": "2025-11-25",
            },
        )

    assert list_tools_as("attacker.example").status_code == 421
    assert list_tools_as("mcp.example.test").status_code == 200


def test_an_image_over_the_inline_budget_comes_as_a_preview_plus_a_link(
    guarded: ServerProcess,
) -> None:
    async def generate(client: Client):
        result = await client.call_tool(
            "generate_image", {"prompt": "detail", **SMALL, "width": 128, "height": 128}
        )
        link = next(b for b in result.content if b.type == "resource_link")
        return result, link, await client.read_resource(link.uri)

    result, link, full = asyncio.run(_with_client(guarded.url, TOKEN, generate))
    assert not result.is_error, result.content
    assert result.structured_content["images"][0]["size_bytes"] > PREVIEW_BUDGET
    preview = next(b for b in result.content if b.type == "image")
    assert preview.mime_type == "image/jpeg"
    assert len(base64.b64decode(preview.data)) <= PREVIEW_BUDGET
    assert max(image_size(preview.data)) < 128
    assert link.mime_type == "image/png" and "preview" in link.title
    assert image_size(full.contents[0].blob) == (128, 128)
