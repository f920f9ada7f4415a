"""The runtime's routes beside KServe's own: the progress stream and the capabilities."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from kserve.errors import ModelNotFound, ModelNotReady

from .errors import error_body
from .model import DiffusersModel
from .request import BACKGROUND, Generation
from .stream import Event, Failure, Partial, Progress, events

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def generate_event(event: Event, generation: Generation) -> bytes:
    """One event of the `:generate` stream."""
    if isinstance(event, Progress):
        return sse("progress", {"step": event.step, "total": event.total})
    if isinstance(event, Partial):
        return sse(
            "partial_image",
            {
                "image_index": event.image_index,
                "partial_image_index": event.partial_image_index,
                "width": generation.width,
                "height": generation.height,
                "quality": generation.quality,
                "background": BACKGROUND,
                "image": event.image,
            },
        )
    if isinstance(event, Failure):
        return sse("error", error_body(event.error))
    # `image` repeats images[0] for the original runtime's :predict clients; this route is
    # new, so its result carries each image once.
    return sse("result", {k: v for k, v in event.prediction.items() if k != "image"})


def register_routes(app: FastAPI, model: DiffusersModel) -> None:
    def served(model_name: str) -> DiffusersModel:
        if model_name != model.name:
            raise ModelNotFound(model_name)
        if not model.ready:
            raise ModelNotReady(model_name)
        return model

    @app.get("/v1/models/{model_name}/capabilities", tags=["diffusers"])
    async def capabilities(model_name: str) -> dict[str, Any]:
        """Limits, defaults, schedulers and formats this runtime accepts."""
        return served(model_name).capabilities()

    @app.post("/v1/models/{model_name}:generate", tags=["diffusers"])
    async def generate(model_name: str, request: Request) -> StreamingResponse:
        """One instance in; `progress` events per denoising step (and `partial_image` events
        when it asks for partial_images), then `result` or `error`.

        Closing the connection cancels the generation within one step.
        """
        served(model_name)
        (generation,) = model.parse_v1(await request.body(), exactly_one=True)

        async def stream() -> AsyncIterator[bytes]:
            async for event in events(model, generation, "generate"):
                yield generate_event(event, generation)

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)
