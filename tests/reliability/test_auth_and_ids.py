"""Access control on a server configured as the production overlay renders it: with a token
set, every MCP and REST route except the probes and metrics refuses a missing or wrong token;
tokens never reach the logs (even at DEBUG); DNS-rebinding requests (foreign Host or Origin)
are refused while the cluster's real host names pass; image ids are unguessable and there is
nothing to list."""

from __future__ import annotations

import asyncio
import itertools
import math
import secrets
from collections import Counter
from collections.abc import Iterator

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from scripts.servers import ServerProcess, start_mcp_server
from tests.deploy.manifests import config, mcp_dir, render
from tests.reliability.hostile import AUTH, TOKEN, TRIED

WRONG_TOKEN = "wrong-token-7f3e9c"
OPEN = ("/health", "/ready", "/metrics")
# The documentation stays readable without a token: it holds the schema, no data.
DOCS = ("/docs", "/redoc", "/openapi.json")
MCP_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2025-11-25",
}
LIST_TOOLS = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}


@pytest.fixture(scope="module")
def production_config() -> dict[str, str]:
    return config(render(mcp_dir("production")))


@pytest.fixture(scope="module")
def guarded(
    small_runtime: ServerProcess,
    production_config: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    with start_mcp_server(
        tmp_path_factory.mktemp("guarded"),
        DIFFUSERS_RUNTIME_URL=small_runtime.url,
        MCP_AUTH_TOKEN=TOKEN,
        ALLOWED_HOSTS=production_config["ALLOWED_HOSTS"],
        PUBLIC_URL=production_config["PUBLIC_URL"],
        LOG_LEVEL="DEBUG",
    ) as server:
        yield server


def routes(server: ServerProcess) -> list[tuple[str, str]]:
    """Every operation of the REST schema, plus the MCP endpoint and an unknown path."""
    schema = httpx.get(f"{server.url}/openapi.json", headers=AUTH, timeout=10).json()
    found = [
        (method.upper(), path.replace("{image_id}", "a" * 32))
        for path, operations in schema["paths"].items()
        for method in operations
    ]
    docs = [("GET", path) for path in DOCS]
    return [*found, *docs, ("POST", "/mcp"), ("GET", "/mcp"), ("DELETE", "/mcp"), ("GET", "/nope")]


@pytest.mark.parametrize(
    "credentials",
    [None, f"Bearer {WRONG_TOKEN}", f"Basic {TOKEN}", f"bearer {TOKEN}x", "Bearer", f"{TOKEN}"],
)
def test_every_route_but_probes_refuses_missing_or_wrong_tokens(
    guarded: ServerProcess, credentials: str | None
) -> None:
    headers = {**MCP_HEADERS, **({"Authorization": credentials} if credentials else {})}
    checked = 0
    for method, path in routes(guarded):
        response = httpx.request(
            method,
            f"{guarded.url}{path}?token={TOKEN}&access_token={TOKEN}",
            headers=headers,
            json=LIST_TOOLS if method == "POST" else None,
            timeout=30,
        )
        TRIED["auth: route x bad credentials"] += 1
        if path in OPEN:
            assert response.status_code in (200, 503), (method, path, response.status_code)
            continue
        checked += 1
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert checked >= 9


def test_the_right_token_opens_rest_and_mcp(guarded: ServerProcess) -> None:
    assert httpx.get(f"{guarded.url}/v1/models", headers=AUTH, timeout=30).status_code == 200

    async def tools() -> list[str]:
        async with (
            httpx2.AsyncClient(headers=AUTH) as http,
            Client(streamable_http_client(f"{guarded.url}/mcp", http_client=http)) as client,
        ):
            return [tool.name for tool in (await client.list_tools()).tools]

    assert "generate_image" in asyncio.run(tools())


def test_tokens_never_reach_the_logs(guarded: ServerProcess, small_runtime: ServerProcess) -> None:
    """At DEBUG, after requests with the right and a wrong token in headers and query."""
    for token in (TOKEN, WRONG_TOKEN):
        httpx.post(
            f"{guarded.url}/v1/images/generations?token={token}",
            headers={"Authorization": f"Bearer {token}"},
            json={"prompt": "a", "size": "64x64", "num_inference_steps": 2},
            timeout=60,
        )
        httpx.post(
            f"{guarded.url}/mcp",
            headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"},
            json=LIST_TOOLS,
            timeout=30,
        )
    for log in (guarded.log(), small_runtime.log()):
        assert TOKEN not in log and WRONG_TOKEN not in log
    assert "POST /v1/images/generations -> 200" in guarded.log()
    assert "POST /mcp -> 401" in guarded.log()


def _mcp_as(server: ServerProcess, host: str, origin: str | None = None) -> int:
    headers = {**MCP_HEADERS, **AUTH, "Host": host}
    if origin:
        headers["Origin"] = origin
    response = httpx.post(f"{server.url}/mcp", headers=headers, json=LIST_TOOLS, timeout=30)
    TRIED["auth: Host/Origin"] += 1
    return response.status_code


def test_dns_rebinding_is_refused_and_cluster_names_pass(
    guarded: ServerProcess, production_config: dict[str, str]
) -> None:
    route = production_config["PUBLIC_URL"].removeprefix("https://")
    cluster_names = [
        route,
        f"{route}:443",
        "mcp-server:8080",
        "mcp-server.mcp-server-production.svc:8080",
        "mcp-server.mcp-server-production.svc.cluster.local:8080",
        "127.0.0.1:8080",
    ]
    for host in cluster_names:
        assert _mcp_as(guarded, host) == 200, host
    assert _mcp_as(guarded, route, origin=f"https://{route}") == 200
    for host in ("attacker.example", "attacker.example:8080", f"{route}.attacker.example", ""):
        assert _mcp_as(guarded, host) == 421, host
    # A page on another site calling the server through a rebound name carries its Origin.
    for origin in ("https://attacker.example", "http://localhost.attacker.example", "null"):
        assert _mcp_as(guarded, route, origin=origin) == 403, origin


def test_image_ids_are_unguessable_and_nothing_lists_them(guarded: ServerProcess) -> None:
    ids: list[str] = []
    for seed in range(6):
        response = httpx.post(
            f"{guarded.url}/v1/images/generations",
            headers=AUTH,
            json={"prompt": "id", "size": "64x64", "num_inference_steps": 2, "n": 2, "seed": seed},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        ids += [image["id"] for image in response.json()["images"]]
    assert len(set(ids)) == len(ids) == 12
    # 32 URL-safe characters: 192 random bits each. Consecutive ids share nothing.
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert all(len(i) == 32 and set(i) <= alphabet for i in ids)
    for first, second in itertools.pairwise(ids):
        assert sum(a == b for a, b in zip(first, second, strict=True)) < 8
    counts = Counter("".join(ids))
    entropy = -sum(c / 384 * math.log2(c / 384) for c in counts.values())
    assert entropy > 5.4  # of at most 6 bits per character

    def get(path: str) -> httpx.Response:
        TRIED["ids: guesses and listings"] += 1
        return httpx.get(f"{guarded.url}{path}", headers=AUTH, timeout=10)

    real = ids[0]
    assert get(f"/v1/images/{real}").status_code == 200
    neighbours = [real[:-1] + c for c in "Aa0_-" if c != real[-1]]
    neighbours += [real[1:] + real[0], real.upper(), real.lower()]
    guesses = [secrets.token_urlsafe(24) for _ in range(100)]
    for guess in neighbours + guesses:
        if guess not in ids:
            assert get(f"/v1/images/{guess}").status_code == 404
    for listing in ("/v1/images", "/v1/images/", "/v1/images/*", "/v1/images/%2A"):
        assert get(listing).status_code in (400, 404, 405), listing

    async def resources() -> tuple[list[str], list[str]]:
        async with (
            httpx2.AsyncClient(headers=AUTH) as http,
            Client(streamable_http_client(f"{guarded.url}/mcp", http_client=http)) as client,
        ):
            listed = [str(r.uri) for r in (await client.list_resources()).resources]
            templates = [
                t.uri_template for t in (await client.list_resource_templates()).resource_templates
            ]
            return listed, templates

    listed, templates = asyncio.run(resources())
    assert not any(real in uri or uri.startswith("image://") for uri in listed), listed
    assert all("{image_id}" in t for t in templates if t.startswith("image://"))
