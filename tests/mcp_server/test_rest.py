"""The REST API through the official `openai` client and plain httpx."""

from __future__ import annotations

import base64
import time

import httpx
import openai
import pytest

from mcp_server.generation import PromptFields
from scripts.servers import ServerProcess, metric
from tests.helpers import image_size

STEPS = {"num_inference_steps": 4}


@pytest.fixture
def client(mcp_server: ServerProcess) -> openai.OpenAI:
    # No retries: a test must see the first answer.
    return openai.OpenAI(base_url=f"{mcp_server.url}/v1", api_key="unused", max_retries=0)


def test_openai_client_gets_n_images_as_b64_json(client: openai.OpenAI) -> None:
    response = client.images.generate(
        prompt="a lighthouse at dusk",
        n=2,
        size="64x96",
        response_format="b64_json",
        extra_body={**STEPS, "seed": 11},
    )
    assert len(response.data) == 2
    assert all(image_size(item.b64_json) == (64, 96) for item in response.data)
    assert response.data[0].b64_json != response.data[1].b64_json
    extra = response.model_extra or {}
    assert extra["seed"] == 11 and extra["model"] == "model"


def test_openai_client_gets_fetchable_urls(client: openai.OpenAI) -> None:
    response = client.images.generate(
        prompt="a lighthouse", n=2, size="64x64", response_format="url", extra_body=STEPS
    )
    assert len(response.data) == 2
    for item in response.data:
        assert item.url.startswith("http://127.0.0.1:")
        download = httpx.get(item.url, timeout=10)
        assert download.status_code == 200 and download.headers["content-type"] == "image/png"
        assert image_size(download.content) == (64, 64)


def test_output_format_is_passed_through(client: openai.OpenAI) -> None:
    response = client.images.generate(
        prompt="x",
        size="64x64",
        response_format="b64_json",
        extra_body={**STEPS, "output_format": "jpeg"},
    )
    assert base64.b64decode(response.data[0].b64_json)[:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"size": "big"}, "size"),
        ({"size": "64x64", "extra_body": {**STEPS, "colour": "red"}}, "colour"),
        ({"size": "64x64", "extra_body": {"num_inference_steps": 5000}}, "num_inference_steps"),
        ({"size": "64x64", "n": 0}, "n"),
        ({"size": "64x64", "model": "no-such-model"}, "no-such-model"),
    ],
)
def test_errors_reach_the_openai_client_naming_the_field(
    client: openai.OpenAI, arguments: dict, field: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="x", **arguments)
    assert field in caught.value.message


def test_models_health_ready_metrics_and_image_ids(
    client: openai.OpenAI, mcp_server: ServerProcess
) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["model"]
    assert httpx.get(f"{mcp_server.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{mcp_server.url}/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert metric(mcp_server.url, "mcp_server_http_requests_total") > 0
    assert "mcp_server_generations_total" in httpx.get(f"{mcp_server.url}/metrics").text
    bad = httpx.get(f"{mcp_server.url}/v1/images/not-an-id")
    assert bad.status_code == 400 and "not a valid id" in bad.json()["error"]["message"]
    gone = httpx.get(f"{mcp_server.url}/v1/images/{'C' * 32}")
    assert gone.status_code == 404 and "expired" in gone.json()["error"]["message"]
    docs = httpx.get(f"{mcp_server.url}/openapi.json").json()
    assert "/v1/images/generations" in docs["paths"]
    # Both bodies offer every shared field (declared once, in PromptFields).
    bodies = docs["components"]["schemas"]
    for body in ("ImageGenerationRequest", "ImageEditForm"):
        assert set(PromptFields.model_fields) <= set(bodies[body]["properties"]), body
    assert {"image", "image[]", "mask", "strength"} <= set(bodies["ImageEditForm"]["properties"])


def test_request_id_reaches_the_runtime(mcp_server: ServerProcess, runtime: ServerProcess) -> None:
    response = httpx.post(
        f"{mcp_server.url}/v1/images/generations",
        json={"prompt": "trace me", "size": "64x64", **STEPS},
        headers={"X-Request-ID": "trace-4242-abcd"},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-4242-abcd"
    assert "trace-4242-abcd" in runtime.log()
    assert "trace-4242-abcd" in mcp_server.log()


def test_a_rest_client_that_gives_up_stops_the_runtime(
    mcp_server: ServerProcess, runtime: ServerProcess
) -> None:
    before = metric(runtime.url, "diffusers_cancellations_total")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{mcp_server.url}/v1/images/generations",
            json={"prompt": "too slow for me", "size": "256x256", "num_inference_steps": 100},
            timeout=httpx.Timeout(10, read=1.5),
        )
    deadline = time.monotonic() + 10
    while metric(runtime.url, "diffusers_cancellations_total") <= before:
        assert time.monotonic() < deadline, mcp_server.log()[-2000:]
        time.sleep(0.1)


def test_an_odd_request_id_is_sanitized_not_fatal(mcp_server: ServerProcess) -> None:
    response = httpx.post(
        f"{mcp_server.url}/v1/images/generations",
        json={"prompt": "x", "size": "64x64", **STEPS},
        headers={"X-Request-ID": "caf\u00e9 <script> id-7".encode()},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "cafscriptid-7"
