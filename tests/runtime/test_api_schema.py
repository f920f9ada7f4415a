"""The runtime's OpenAPI document against the runtime itself: schemathesis, every phase and
check (tests/schema_checks.py), on the tiny model with small limits."""

from __future__ import annotations

import httpx

from scripts.servers import ServerProcess
from tests.schema_checks import run


def test_the_runtime_answers_as_its_document_says(small_runtime: ServerProcess) -> None:
    found, _ = run(f"{small_runtime.url}/openapi.json")
    assert not found, "\n\n".join(found)


def test_the_document_carries_the_served_limits(small_runtime: ServerProcess) -> None:
    schemas = httpx.get(f"{small_runtime.url}/openapi.json", timeout=10).json()["components"][
        "schemas"
    ]
    fields = schemas["GenerationRequest"]["properties"]
    assert fields["num_inference_steps"]["anyOf"][0]["maximum"] == 2
    assert fields["num_images"]["anyOf"][0]["maximum"] == 2
    assert fields["prompt"]["maxLength"] == 200
    # The tiny model has no adapters: only an empty list is valid, in JSON and as JSON text.
    loras = fields["loras"]["anyOf"][0]
    assert loras["items"]["properties"]["name"]["enum"] == [] and loras["maxItems"] == 4
    assert schemas["V2Parameters"]["properties"]["loras"]["pattern"] == r"^\[\]$"
    # The tiny UNet halves the latents once; its norms there need 2x2: 32x32 pixels.
    width = fields["width"]["anyOf"][0]
    assert {"minimum": 32, "maximum": 64, "multipleOf": 8}.items() <= width.items()
    assert schemas["OpenAIImageRequest"]["properties"]["n"]["maximum"] == 2
    assert schemas["OpenAIEditForm"]["required"] == ["prompt", "image"]
