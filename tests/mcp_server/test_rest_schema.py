"""The MCP server's REST document against the server: schemathesis, every phase and check
(tests/schema_checks.py), in front of the tiny model with small limits."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from scripts.servers import ServerProcess, start_mcp_server
from tests.schema_checks import run


@pytest.fixture(scope="module")
def small_mcp_server(
    small_runtime: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with start_mcp_server(
        tmp_path_factory.mktemp("small-mcp"), DIFFUSERS_RUNTIME_URL=small_runtime.url
    ) as server:
        yield server


def test_the_server_answers_as_its_document_says(small_mcp_server: ServerProcess) -> None:
    found, _ = run(f"{small_mcp_server.url}/openapi.json")
    assert not found, "\n\n".join(found)


def test_the_document_carries_the_default_models_limits(small_mcp_server: ServerProcess) -> None:
    schemas = httpx.get(f"{small_mcp_server.url}/openapi.json", timeout=10).json()["components"][
        "schemas"
    ]
    fields = schemas["ImageGenerationRequest"]["properties"]
    assert fields["num_inference_steps"]["anyOf"][0]["maximum"] == 2
    assert fields["n"]["maximum"] == 2
    assert fields["prompt"]["maxLength"] == 200
    assert fields["size"]["anyOf"][0]["pattern"].startswith("^(auto|(32|40|")
    assert fields["model"]["anyOf"][0]["enum"] == ["model", None]
    assert "image" in schemas["ImageEditForm"]["required"]


@pytest.mark.parametrize("path", ["/v1/images/generations", "/v1/images/edits"])
def test_other_methods_on_the_image_routes_are_405_with_allow(
    small_mcp_server: ServerProcess, path: str
) -> None:
    answer = httpx.get(f"{small_mcp_server.url}{path}", timeout=10)
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert "send POST" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    ("field", "value"), [("num_inference_steps", True), ("n", 2.0), ("guidance_scale", False)]
)
def test_booleans_and_floats_do_not_pass_as_counts(
    small_mcp_server: ServerProcess, field: str, value: object
) -> None:
    answer = httpx.post(
        f"{small_mcp_server.url}/v1/images/generations",
        json={"prompt": "x", field: value},
        timeout=30,
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == field
