"""OpenAI's Images API as both deployables speak it: the size string, the server-sent events of
a streamed answer, the models list, and what is refused and why.

The runtime serves it on its own routes (`diffusers_runtime/openai_api.py`), the MCP server on
its REST API (`mcp_server/rest.py`); each fills these shapes from its own result types.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from wire.sse import sse

SIZE = re.compile(r"^(\d+)x(\d+)$")
# Diffusion models count no tokens; the completed event's type requires the fields.
NO_USAGE = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}
STYLE_REFUSED = (
    "style: vivid and natural are DALL-E 3's styles, which these models do not have; "
    "describe the style in the prompt instead"
)


def parse_size(size: str | None) -> tuple[int, int] | None:
    """WIDTHxHEIGHT as two numbers; None for no size or "auto" (the model's own)."""
    if size is None or size == "auto":
        return None
    match = SIZE.match(size)
    if match is None:
        raise ValueError(f'size: must look like "512x512" (WIDTHxHEIGHT) or auto, not {size!r}')
    return int(match[1]), int(match[2])


def progress_comment(step: int, total: int) -> bytes:
    """Progress as an SSE comment: OpenAI's clients skip it, proxies see the stream alive."""
    return f": step {step}/{total}\n\n".encode()


def stored_comment(details: dict[str, Any]) -> bytes:
    """What the JSON answer says of an image beyond OpenAI's event (its link, seed, timings),
    as an SSE comment sent just before that image's completed event: the events stay exactly
    OpenAI's types, and a client of ours (the playground) reads it."""
    return f": stored {json.dumps(details)}\n\n".encode()


def image_event(
    kind: str,
    b64: str,
    *,
    size: str,
    quality: str | None,
    background: str | None,
    output_format: str,
    partial_image_index: int | None = None,
) -> bytes:
    """KIND.partial_image (with PARTIAL_IMAGE_INDEX) or KIND.completed; KIND is
    image_generation or image_edit."""
    data: dict[str, Any] = {
        "b64_json": b64,
        "created_at": int(time.time()),
        "size": size,
        "quality": quality or "auto",
        "background": background or "auto",
        "output_format": output_format,
    }
    if partial_image_index is None:
        name = f"{kind}.completed"
        data["usage"] = NO_USAGE
    else:
        name = f"{kind}.partial_image"
        data["partial_image_index"] = partial_image_index
    return sse(name, {"type": name, **data})


def model_entry(name: str) -> dict[str, Any]:
    """A model in OpenAI's list shape."""
    return {"id": name, "object": "model", "created": 0, "owned_by": "diffusers"}
