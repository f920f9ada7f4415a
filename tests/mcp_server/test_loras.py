"""LoRA adapters through the MCP server, on the default model and its committed adapters:
list_models shows them with their descriptions, generate_image and both REST routes (JSON and
a multipart edit form) apply them, and an unknown one is refused naming those there are."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
from mcp import Client
from PIL import Image

from scene_model import adapters as styles
from scene_model.scenes import Scene, full_caption
from scripts.servers import ServerProcess

# A scene whose three styles the judges read at seed 0 (scene_model.adapters: each adapter draws
# its style on 4 or more of 5 held-out scenes, not on every one).
SCENE = Scene(shape="square", colour="pink", background="yellow", position="center", size="large")
PROMPT = full_caption(SCENE)


def picture(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def test_list_models_shows_each_adapter_and_generate_image_applies_one(
    default_mcp_server: ServerProcess,
) -> None:
    async def scenario():
        async with Client(f"{default_mcp_server.url}/mcp") as client:
            models = await client.call_tool("list_models", {})
            styled = await client.call_tool(
                "generate_image",
                {"prompt": PROMPT, "seed": 0, "loras": [{"name": "palette", "scale": 1}]},
            )
            unknown = await client.call_tool(
                "generate_image", {"prompt": PROMPT, "loras": [{"name": "sepia"}]}
            )
            return models, styled, unknown

    models, styled, unknown = asyncio.run(scenario())
    loras = models.structured_content["models"][0]["capabilities"]["loras"]
    described = {lora["name"]: lora["description"] for lora in loras}
    assert {"outline", "stripes", "palette"} <= described.keys()
    assert all(described.values())
    assert not styled.is_error, styled.content
    image = next(c for c in styled.content if c.type == "image")
    assert styles.judge("palette", picture(image.data), SCENE)
    assert "seed 0, LoRA palette x1 (" in styled.content[0].text
    assert unknown.is_error
    assert (
        "no adapter 'sepia' here; available: outline, palette, stripes" in unknown.content[0].text
    )


def test_rest_generations_and_edits_take_loras(default_mcp_server: ServerProcess) -> None:
    url = default_mcp_server.url
    models = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]
    assert "outline" in {lora["name"] for lora in models["capabilities"]["loras"]}
    generated = httpx.post(
        f"{url}/v1/images/generations",
        json={
            "prompt": PROMPT,
            "seed": 0,
            "response_format": "b64_json",
            "loras": [{"name": "outline"}],
        },
        timeout=120,
    )
    assert generated.status_code == 200, generated.text
    assert styles.judge("outline", picture(generated.json()["data"][0]["b64_json"]), SCENE)
    plain = io.BytesIO()
    Image.new("RGB", (128, 128), (30, 60, 220)).save(plain, format="PNG")
    edited = httpx.post(
        f"{url}/v1/images/edits",
        data={
            "prompt": PROMPT,
            "seed": "0",
            "strength": "1.0",
            "response_format": "b64_json",
            "loras": json.dumps([{"name": "palette"}]),
        },
        files={"image": ("blue.png", plain.getvalue(), "image/png")},
        timeout=120,
    )
    assert edited.status_code == 200, edited.text
    assert styles.judge("palette", picture(edited.json()["data"][0]["b64_json"]), SCENE)
